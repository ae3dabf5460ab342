//! The Aggregated Discovery Service: serves the newest [`Snapshot`] to each
//! xDS client over one ADS stream, state of the world
//! (`StreamAggregatedResources`) or delta (`DeltaAggregatedResources`).
//!
//! Each stream is one future (a [`futures::stream::unfold`] owned by the
//! gRPC connection), so nothing outlives it. Rules it keeps, learnt from
//! other xDS servers' bugs:
//! - types go out in make-before-break order (clusters, endpoints,
//!   listeners, routes) whenever a snapshot changes;
//! - the endpoints of every cluster just sent follow it, changed or not:
//!   Envoy warms an updated cluster until it receives its endpoints again;
//! - an initial request (and a reconnect) is always answered;
//! - a NACK is recorded and never answered by resending what was refused;
//!   the next snapshot is sent when it comes;
//! - a request that acknowledges an older response than the latest one of
//!   its type is stale and changes nothing (answering it would loop).
//!
//! The state of every client (which revision it holds, its last NACK) is
//! published on a `watch`, for the Envoy driver to wait for ACKs and for
//! status reports.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::service::discovery::v3 as discovery;
use envoy_types::pb::google::protobuf::Any;
use futures::Stream;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::translate::{Flavor, Resources};
use crate::type_url;

pub use discovery::aggregated_discovery_service_server::AggregatedDiscoveryServiceServer;

/// What the server serves: both flavors of one node configuration.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// The Switchyard revision it was made from.
    pub revision: u64,
    /// The xDS version: the revision, then a sequence number that changes
    /// when anything else (endpoint health) does (`REVISION.SEQ`).
    pub version: String,
    /// For Envoy.
    pub envoy: Resources,
    /// For proxyless gRPC clients.
    pub proxyless: Resources,
}

impl Snapshot {
    fn of(&self, flavor: Flavor) -> &Resources {
        match flavor {
            Flavor::Envoy => &self.envoy,
            Flavor::Proxyless => &self.proxyless,
        }
    }
}

/// A refusal by an xDS client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nack {
    /// The revision of the snapshot refused.
    pub revision: u64,
    /// The type of resources refused.
    pub type_url: String,
    /// The client's error text.
    pub message: String,
}

/// One connected xDS client, as the server sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Its `node.id` (Envoy's `--service-node`, the bootstrap's `node.id`).
    pub node: String,
    /// Its `node.user_agent_name` (`envoy`, `gRPC Python`, ...).
    pub user_agent: String,
    /// What it is served.
    pub flavor: Flavor,
    /// Delta (incremental) rather than state of the world.
    pub delta: bool,
    /// Whether it subscribed to anything yet.
    pub subscribed: bool,
    /// The revision it holds: every response of the newest snapshot sent to
    /// it was answered (ACK or NACK). `None` while answers are awaited.
    pub synced: Option<u64>,
    /// Its last NACK, until it ACKs that type again at a newer revision.
    pub nack: Option<Nack>,
}

impl Client {
    /// A short description for errors and logs: `envoy node-1 (delta)`.
    pub fn describe(&self) -> String {
        let agent = if self.user_agent.is_empty() {
            "xds client"
        } else {
            &self.user_agent
        };
        let mode = if self.delta { "delta" } else { "sotw" };
        format!("{agent} {:?} ({mode})", self.node)
    }
}

/// The connected clients, by stream id.
pub type Clients = BTreeMap<u64, Client>;

/// The ADS service.
#[derive(Debug, Clone)]
pub struct Server {
    snapshots: watch::Receiver<Arc<Snapshot>>,
    /// Shared with every stream, which adds itself and removes itself
    /// when it ends; a `watch` because readers want the current set.
    clients: Arc<watch::Sender<Clients>>,
    next_id: Arc<AtomicU64>,
    shutdown: CancellationToken,
}

impl Server {
    /// Serves what `snapshots` publishes until `shutdown`.
    pub fn new(snapshots: watch::Receiver<Arc<Snapshot>>, shutdown: CancellationToken) -> Self {
        Server {
            snapshots,
            clients: Arc::new(watch::Sender::new(Clients::new())),
            next_id: Arc::new(AtomicU64::new(1)),
            shutdown,
        }
    }

    /// The connected clients and their state.
    pub fn clients(&self) -> watch::Receiver<Clients> {
        self.clients.subscribe()
    }

    /// The tonic service.
    pub fn service(self) -> AggregatedDiscoveryServiceServer<Server> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    fn open<In>(&self, inbound: tonic::Streaming<In>, delta: bool) -> Session<In> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Session {
            inbound,
            snapshots: self.snapshots.clone(),
            current: self.snapshots.borrow().clone(),
            queue: VecDeque::new(),
            guard: Guard {
                id,
                clients: self.clients.clone(),
            },
            client: Client {
                node: String::new(),
                user_agent: String::new(),
                flavor: Flavor::Envoy,
                delta,
                subscribed: false,
                synced: None,
                nack: None,
            },
            started: false,
            pending: HashMap::new(),
            nonce: 0,
            sotw: HashMap::new(),
            delta: HashMap::new(),
            shutdown: self.shutdown.clone(),
            ended: false,
        }
    }
}

/// Removes its client from the published set when the stream ends.
struct Guard {
    id: u64,
    clients: Arc<watch::Sender<Clients>>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.clients
            .send_if_modified(|c| c.remove(&self.id).is_some());
    }
}

/// A state-of-the-world subscription to one type.
#[derive(Debug, Default)]
struct SotwSub {
    /// Requested names; empty is a wildcard for clusters and listeners.
    names: BTreeSet<String>,
    /// The nonce of the latest response of this type.
    last_nonce: String,
}

/// A delta subscription to one type.
#[derive(Debug, Default)]
struct DeltaSub {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client holds: name → version.
    known: HashMap<String, String>,
}

/// One ADS stream.
struct Session<In> {
    inbound: tonic::Streaming<In>,
    snapshots: watch::Receiver<Arc<Snapshot>>,
    current: Arc<Snapshot>,
    queue: VecDeque<Out>,
    guard: Guard,
    client: Client,
    started: bool,
    /// Responses not answered yet: nonce → (type, revision).
    pending: HashMap<String, (&'static str, u64)>,
    nonce: u64,
    sotw: HashMap<&'static str, SotwSub>,
    delta: HashMap<&'static str, DeltaSub>,
    shutdown: CancellationToken,
    ended: bool,
}

enum Out {
    Sotw(discovery::DiscoveryResponse),
    Delta(discovery::DeltaDiscoveryResponse),
}

/// The known type URL equal to `t`, as a static string.
fn known_type(t: &str) -> Option<&'static str> {
    type_url::ORDER.into_iter().find(|k| *k == t)
}

/// The version of one resource: a hash of its bytes.
fn resource_version(any: &Any) -> String {
    let mut h = DefaultHasher::new();
    any.value.hash(&mut h);
    format!("{:016x}", h.finish())
}

/// Whether an empty set of names subscribes to everything (legacy wildcard).
fn wildcard_type(t: &str) -> bool {
    t == type_url::CLUSTER || t == type_url::LISTENER
}

impl<In> Session<In> {
    fn next_nonce(&mut self, type_url: &'static str) -> String {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        self.pending
            .insert(nonce.clone(), (type_url, self.current.revision));
        nonce
    }

    fn start(&mut self, node: Option<&Node>) {
        if self.started {
            return;
        }
        self.started = true;
        if let Some(node) = node {
            self.client.node = node.id.clone();
            self.client.user_agent = node.user_agent_name.clone();
        }
        // Envoy names itself; everything else asking for xDS here is a
        // proxyless gRPC client.
        self.client.flavor = if self.client.user_agent == "envoy" {
            Flavor::Envoy
        } else {
            Flavor::Proxyless
        };
        info!(client = %self.client.describe(), "xDS client connected");
    }

    /// Records the answer to the response `nonce`, if it is one pending.
    fn answered(&mut self, nonce: &str, error: Option<&str>) {
        let Some((t, revision)) = self.pending.remove(nonce) else {
            return;
        };
        match error {
            Some(message) => {
                warn!(client = %self.client.describe(), type_url = t, revision, %message, "xDS client refused a configuration");
                self.client.nack = Some(Nack {
                    revision,
                    type_url: t.to_owned(),
                    message: message.to_owned(),
                });
            }
            None => {
                debug!(client = %self.client.describe(), type_url = t, revision, "xDS client acknowledged");
                if self
                    .client
                    .nack
                    .as_ref()
                    .is_some_and(|n| n.type_url == t && n.revision < revision)
                {
                    self.client.nack = None;
                }
            }
        }
    }

    /// Publishes this client's state if it changed.
    fn publish(&mut self) {
        self.client.subscribed = !self.sotw.is_empty() || !self.delta.is_empty();
        self.client.synced = self.pending.is_empty().then_some(self.current.revision);
        let id = self.guard.id;
        let client = &self.client;
        self.guard.clients.send_if_modified(|c| {
            if c.get(&id) == Some(client) {
                false
            } else {
                c.insert(id, client.clone());
                true
            }
        });
    }

    /// Queues a state-of-the-world response of type `t`.
    fn sotw_respond(&mut self, t: &'static str) {
        let flavor = self.client.flavor;
        let current = self.current.clone();
        let Some(sub) = self.sotw.get(t) else { return };
        let wildcard = sub.names.is_empty() && wildcard_type(t);
        let resources: Vec<Any> = current
            .of(flavor)
            .of(t)
            .filter(|(name, _)| wildcard || sub.names.contains(*name))
            .map(|(_, any)| any.clone())
            .collect();
        let nonce = self.next_nonce(t);
        if let Some(sub) = self.sotw.get_mut(t) {
            sub.last_nonce = nonce.clone();
        }
        debug!(type_url = t, version = %current.version, resources = resources.len(), "sending");
        self.queue
            .push_back(Out::Sotw(discovery::DiscoveryResponse {
                version_info: current.version.clone(),
                resources,
                type_url: t.to_owned(),
                nonce,
                ..Default::default()
            }));
    }

    fn sotw_request(&mut self, req: discovery::DiscoveryRequest) {
        self.start(req.node.as_ref());
        let Some(t) = known_type(&req.type_url) else {
            debug!(type_url = %req.type_url, "ignoring a request for a type not served");
            return;
        };
        let error = req.error_detail.as_ref().map(|s| s.message.as_str());
        if !req.response_nonce.is_empty() {
            self.answered(&req.response_nonce, error);
            let latest = self
                .sotw
                .get(t)
                .is_some_and(|s| s.last_nonce == req.response_nonce);
            if !latest || error.is_some() {
                // Stale, or a refusal: nothing to send until a new snapshot.
                return;
            }
        }
        let names: BTreeSet<String> = req.resource_names.into_iter().collect();
        let sub = self.sotw.entry(t).or_default();
        if !req.response_nonce.is_empty() && sub.names == names {
            return; // An ACK.
        }
        sub.names = names;
        self.sotw_respond(t);
    }

    /// Queues a delta response of type `t` with what the client lacks;
    /// `force`: names sent even when unchanged. Returns the names sent.
    fn delta_send(
        &mut self,
        t: &'static str,
        force: &BTreeSet<String>,
        always: bool,
    ) -> BTreeSet<String> {
        let flavor = self.client.flavor;
        let current = self.current.clone();
        let Some(sub) = self.delta.get_mut(t) else {
            return BTreeSet::new();
        };
        let available: BTreeMap<&String, &Any> = current.of(flavor).of(t).collect();
        let mut resources = Vec::new();
        let mut sent = BTreeSet::new();
        let in_scope = |name: &String| sub.wildcard || sub.names.contains(name);
        for (name, any) in &available {
            if !in_scope(name) {
                continue;
            }
            let version = resource_version(any);
            if sub.known.get(*name) != Some(&version) || force.contains(*name) {
                sub.known.insert((*name).clone(), version.clone());
                sent.insert((*name).clone());
                resources.push(discovery::Resource {
                    name: (*name).clone(),
                    version,
                    resource: Some((*any).clone()),
                    ..Default::default()
                });
            }
        }
        let removed: Vec<String> = sub
            .known
            .keys()
            .filter(|name| !available.contains_key(name))
            .cloned()
            .collect();
        for name in &removed {
            sub.known.remove(name);
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return sent;
        }
        let nonce = self.next_nonce(t);
        debug!(type_url = t, version = %current.version, resources = resources.len(), removed = removed.len(), "sending");
        self.queue
            .push_back(Out::Delta(discovery::DeltaDiscoveryResponse {
                system_version_info: current.version.clone(),
                resources,
                type_url: t.to_owned(),
                removed_resources: removed,
                nonce,
                ..Default::default()
            }));
        sent
    }

    fn delta_request(&mut self, req: discovery::DeltaDiscoveryRequest) {
        self.start(req.node.as_ref());
        let Some(t) = known_type(&req.type_url) else {
            debug!(type_url = %req.type_url, "ignoring a request for a type not served");
            return;
        };
        let error = req.error_detail.as_ref().map(|s| s.message.as_str());
        if !req.response_nonce.is_empty() {
            self.answered(&req.response_nonce, error);
        }
        let first = !self.delta.contains_key(t);
        let sub = self.delta.entry(t).or_default();
        if first {
            sub.wildcard = wildcard_type(t) && req.resource_names_subscribe.is_empty();
            sub.known = req.initial_resource_versions.clone().into_iter().collect();
        }
        let mut changed = first;
        let mut added = BTreeSet::new();
        for name in req.resource_names_subscribe {
            changed = true;
            if name == "*" {
                sub.wildcard = true;
            } else if sub.names.insert(name.clone()) {
                added.insert(name);
            }
        }
        for name in req.resource_names_unsubscribe {
            changed = true;
            if name == "*" {
                sub.wildcard = false;
            } else {
                sub.names.remove(&name);
                sub.known.remove(&name);
            }
        }
        if error.is_some() || !changed {
            return;
        }
        // A new or re-subscribed endpoint set is always answered: a cluster
        // waits for it while warming, even when its version is unchanged.
        let force = if t == type_url::ENDPOINT {
            if first {
                self.delta
                    .get(t)
                    .map(|s| s.names.clone())
                    .unwrap_or_default()
            } else {
                added
            }
        } else {
            BTreeSet::new()
        };
        self.delta_send(t, &force, first);
    }

    /// Sends what a new snapshot changed, type by type in order.
    fn on_snapshot(&mut self) {
        self.current = self.snapshots.borrow_and_update().clone();
        if self.client.delta {
            let mut clusters = BTreeSet::new();
            for t in type_url::ORDER {
                let force = if t == type_url::ENDPOINT {
                    clusters.clone()
                } else {
                    BTreeSet::new()
                };
                let sent = self.delta_send(t, &force, false);
                if t == type_url::CLUSTER {
                    clusters = sent;
                }
            }
        } else {
            for t in type_url::ORDER {
                if self.sotw.contains_key(t) {
                    self.sotw_respond(t);
                }
            }
        }
    }
}

type Responses<T> = Pin<Box<dyn Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;

/// Runs `session` as a response stream: each step yields a queued
/// response, or waits for a request, a new snapshot or shutdown.
fn run<In, T>(
    session: Session<In>,
    handle: fn(&mut Session<In>, In),
    unwrap: fn(Out) -> Option<T>,
) -> Responses<T>
where
    In: Send + 'static,
    T: Send + 'static,
{
    Box::pin(futures::stream::unfold(session, move |mut s| async move {
        loop {
            if let Some(out) = s.queue.pop_front() {
                s.publish();
                if let Some(out) = unwrap(out) {
                    return Some((Ok(out), s));
                }
                continue;
            }
            if s.ended {
                return None;
            }
            s.publish();
            tokio::select! {
                _ = s.shutdown.cancelled() => return None,
                msg = s.inbound.message() => match msg {
                    Ok(Some(req)) => handle(&mut s, req),
                    Ok(None) => {
                        info!(client = %s.client.describe(), "xDS client disconnected");
                        return None;
                    }
                    Err(status) => {
                        debug!(client = %s.client.describe(), %status, "xDS stream failed");
                        return None;
                    }
                },
                changed = s.snapshots.changed() => match changed {
                    Ok(()) => s.on_snapshot(),
                    Err(_) => s.ended = true,
                },
            }
        }
    }))
}

#[tonic::async_trait]
impl discovery::aggregated_discovery_service_server::AggregatedDiscoveryService for Server {
    type StreamAggregatedResourcesStream = Responses<discovery::DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = Responses<discovery::DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<discovery::DiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::StreamAggregatedResourcesStream>, tonic::Status> {
        let mut session = self.open(request.into_inner(), false);
        session.snapshots.mark_unchanged();
        Ok(tonic::Response::new(run(
            session,
            Session::sotw_request,
            |out| match out {
                Out::Sotw(r) => Some(r),
                Out::Delta(_) => None,
            },
        )))
    }

    async fn delta_aggregated_resources(
        &self,
        request: tonic::Request<tonic::Streaming<discovery::DeltaDiscoveryRequest>>,
    ) -> Result<tonic::Response<Self::DeltaAggregatedResourcesStream>, tonic::Status> {
        let mut session = self.open(request.into_inner(), true);
        session.snapshots.mark_unchanged();
        Ok(tonic::Response::new(run(
            session,
            Session::delta_request,
            |out| match out {
                Out::Delta(r) => Some(r),
                Out::Sotw(_) => None,
            },
        )))
    }
}
