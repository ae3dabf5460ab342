//! The built-in proxy: opens the node's listeners and forwards HTTP requests
//! and TCP connections to the endpoints of their services.
//!
//! The node's configuration arrives on a `watch` channel. Each version is
//! compiled once into an immutable [`Table`] (routers, endpoint pools and
//! balancers) published behind an `Arc`; every request or connection reads
//! the table current when it starts and finishes on it, so a configuration
//! change never disturbs traffic in flight. Listeners are reconciled by
//! name: one whose bind address and protocol did not change keeps its socket
//! and connections; a removed one stops accepting and drains.
//!
//! What must outlive a configuration lives in the driver, keyed by name, and
//! each table refers to it: each service's upstream connections (warm
//! keep-alive pools, and the counts its connection limits apply to), each
//! endpoint's outlier-detection record (an ejected endpoint stays ejected
//! across a change), each service's requests and retries in flight (so
//! circuit breaking and the retry budget count traffic on every table), and
//! the traffic counters of listeners, services and endpoints that the
//! metrics endpoint reads (see [`Metrics`]).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::node::NodeConfig;
use switchyard::resource::{Endpoint, Health, Labels, ListenerTarget, Protocol, Service};
use switchyard::validate::Invalid;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};

use crate::balance::{Balancer, Policy, Target};
use crate::router::Router;

pub mod balance;
mod body;
mod error;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
mod grpc;
mod h1;
mod http;
mod limit;
mod metrics;
mod outlier;
mod pool;
pub mod router;
mod tcp;
mod workers;

pub use metrics::Metrics;
use metrics::{ByName, EndpointStats, ListenerStats, ServiceStats};
use workers::Lane;

/// How long a removed listener's connections may take to finish.
const DRAIN: Duration = Duration::from_secs(30);

/// How often idle upstream connections past their service's idle timeout
/// are closed when no request comes to find them so.
const PRUNE_EVERY: Duration = Duration::from_secs(1);

/// The listen backlog used unless one is set ([`Builtin::with_backlog`]):
/// 4096, or the kernel's cap (`net.core.somaxconn`) when that is lower.
/// std's `TcpListener::bind` asks for 128, which a burst of connections on
/// loopback overflows (the kernel then drops their handshakes, and each
/// client waits for a retransmission, a second or more).
pub use switchyard::http::default_backlog;

/// The built-in proxy.
#[derive(Debug, Default)]
pub struct Builtin {
    /// Threads to serve traffic on; 0: the runtime that runs the proxy.
    threads: usize,
    /// The listen backlog of its listeners; `None`: [`default_backlog`].
    backlog: Option<u32>,
    /// The node's zone (its `zone` label): endpoints of this zone are
    /// preferred (see [`balance::preferred_zone`]).
    zone: Option<Arc<str>>,
    /// Upstream HTTP/2 connection tasks, waited for at shutdown (HTTP/1.1
    /// connections have no task of their own).
    upstream_tasks: TaskTracker,
    services: Arc<Services>,
    listeners: Arc<ByName<ListenerStats>>,
    /// The addresses of the listeners open now, for [`Builtin::preflight`].
    /// A std mutex: replaced after each reconcile, read by the sync task.
    bound: Arc<Mutex<HashSet<SocketAddr>>>,
}

/// What the proxy remembers about one service across configurations.
#[derive(Debug, Default)]
struct Shared {
    /// Outlier-detection records of its endpoints.
    hosts: outlier::Hosts,
    /// Requests and retries in flight, for circuit breaking and the retry
    /// budget.
    counters: Arc<limit::Counters>,
    /// Its upstream connections.
    connections: pool::Connections,
    /// Traffic counters of its endpoints, by endpoint name.
    endpoints: ByName<EndpointStats>,
    /// Its retries and circuit breaking, counted.
    stats: ServiceStats,
}

/// [`Shared`] state by service name. A mutex because only compiling a
/// configuration touches the map; requests reach their service's state
/// through the compiled table.
#[derive(Debug, Default)]
struct Services(Mutex<HashMap<String, Arc<Shared>>>);

impl Services {
    /// The state of `names`, forgetting every other service.
    fn sync<'a>(&self, names: impl Iterator<Item = &'a str>) -> HashMap<String, Arc<Shared>> {
        let mut map = self.0.lock().expect("services");
        let wanted: HashMap<String, Arc<Shared>> = names
            .map(|n| (n.to_owned(), map.entry(n.to_owned()).or_default().clone()))
            .collect();
        map.retain(|n, _| wanted.contains_key(n));
        wanted
    }

    /// Closes the idle upstream connections that `keep` refuses (and so
    /// lets the tasks of HTTP/2 ones end).
    fn close_connections(&self, keep: impl Fn(std::time::Instant, Duration) -> bool + Copy) {
        for (_, shared) in self.all() {
            shared.connections.close_idle(keep);
        }
    }

    /// Every service's state, sorted by name.
    fn all(&self) -> Vec<(String, Arc<Shared>)> {
        let mut all: Vec<_> = self
            .0
            .lock()
            .expect("services")
            .iter()
            .map(|(n, s)| (n.clone(), s.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

impl Builtin {
    /// A proxy with no listener open yet, serving traffic on the runtime
    /// that runs it.
    pub fn new() -> Self {
        Self::default()
    }

    /// Serves traffic on `n` threads of its own, each with a
    /// single-threaded runtime (a request is served on the thread that
    /// accepted its connection); 0 (the default) serves it on the runtime
    /// that runs the proxy.
    #[must_use]
    pub fn with_threads(mut self, n: usize) -> Self {
        self.threads = n;
        self
    }

    /// Binds listeners with a listen backlog of `n` connections (at least
    /// 1; the kernel caps it at `net.core.somaxconn`) instead of
    /// [`default_backlog`]. A listener kept across configurations keeps
    /// the backlog it was opened with.
    #[must_use]
    pub fn with_backlog(mut self, n: u32) -> Self {
        self.backlog = Some(n.max(1));
        self
    }

    /// Prefers the routable endpoints of `zone`, the node's zone, falling
    /// back to every routable endpoint when none of `zone` is (the rule of
    /// [`balance::preferred_zone`], which the agent's DNS follows too).
    /// `None` (the default) balances over every routable endpoint.
    #[must_use]
    pub fn with_zone(mut self, zone: Option<String>) -> Self {
        self.zone = zone.map(Arc::from);
        self
    }

    /// A check the agent runs on every configuration before accepting it:
    /// each listener the proxy does not already hold must be bindable on
    /// this node (port free, permission to bind it). A configuration that
    /// fails is refused (`Nack`ed) with the reason, and the previous one
    /// stays live, instead of being accepted with a listener that cannot
    /// open. A port taken between the check and the proxy's bind is still
    /// only logged.
    pub fn preflight(&self) -> impl Fn(&NodeConfig) -> Result<(), Invalid> + Send + Sync + 'static {
        let bound = self.bound.clone();
        move |config: &NodeConfig| {
            // Held for the whole check (see `run`): a few trial binds.
            let held = bound.lock().expect("bound listeners");
            let mut v = switchyard::validate::Violations::new();
            for (name, l) in &config.listeners {
                let addr = SocketAddr::new(l.address, l.port);
                if held.contains(&addr) {
                    continue;
                }
                if let Err(error) = std::net::TcpListener::bind(addr) {
                    v.push(
                        format!("listener/{name}"),
                        format_args!("cannot bind {addr}: {error}"),
                    );
                }
            }
            v.finish(())
        }
    }

    /// A handle on the proxy's outlier-detection records, which stays
    /// valid while the proxy runs (take it before [`Builtin::run`]): other
    /// parts of the node (its DNS answers) leave out what the proxy ejected.
    pub fn outliers(&self) -> Outliers {
        Outliers {
            services: self.services.clone(),
        }
    }

    /// A handle on the proxy's traffic counters, which stays valid while
    /// the proxy runs (take it before [`Builtin::run`] consumes the proxy).
    pub fn metrics(&self) -> Metrics {
        Metrics {
            listeners: self.listeners.clone(),
            services: self.services.clone(),
        }
    }
}

/// Which endpoints the proxy's passive outlier detection ejected, read
/// from outside the proxy (see [`Builtin::outliers`]).
#[derive(Debug, Clone)]
pub struct Outliers {
    services: Arc<Services>,
}

impl Outliers {
    /// Whether `endpoint` is ejected now. Takes two uncontended locks (the
    /// service map, then the service's records; ejecting and compiling a
    /// configuration are the only other takers) and allocates the record's
    /// key, unless the proxy does not know the service. An endpoint the
    /// proxy has not seen yet is not ejected.
    pub fn is_ejected(&self, endpoint: &Endpoint) -> bool {
        let shared = {
            let map = self.services.0.lock().expect("services");
            match map.get(&endpoint.service) {
                Some(shared) => shared.clone(),
                None => return false,
            }
        };
        shared
            .hosts
            .is_ejected(&outlier::key(endpoint), outlier::now())
    }
}

/// One endpoint of a pool, with what outlives configurations.
type Member = (
    Arc<Endpoint>,
    Arc<outlier::Host>,
    Arc<EndpointStats>,
    Arc<pool::Conns>,
);

/// One endpoint set with its balancer: the endpoints of a service, or of a
/// labelled subset of it.
#[derive(Debug)]
pub struct Pool {
    /// The members, in endpoint-name order.
    pub endpoints: Vec<Arc<Endpoint>>,
    /// Their outlier-detection records, in the same order.
    hosts: Vec<Arc<outlier::Host>>,
    /// Their traffic counters, in the same order.
    stats: Vec<Arc<EndpointStats>>,
    /// Their upstream connections, in the same order.
    conns: Vec<Arc<pool::Conns>>,
    balancer: Balancer,
    panic_threshold_percent: u8,
    /// The node's zone, preferred when it has routable endpoints.
    zone: Option<Arc<str>>,
}

impl Pool {
    fn new(service: &Service, members: Vec<Member>, zone: Option<Arc<str>>) -> Pool {
        let mut endpoints = Vec::with_capacity(members.len());
        let mut hosts = Vec::with_capacity(members.len());
        let mut stats = Vec::with_capacity(members.len());
        let mut conns = Vec::with_capacity(members.len());
        for (endpoint, host, counters, c) in members {
            endpoints.push(endpoint);
            hosts.push(host);
            stats.push(counters);
            conns.push(c);
        }
        let targets = endpoints
            .iter()
            .enumerate()
            .map(|(id, e)| Target {
                id,
                weight: e.weight,
                key: format!("{}:{}", e.address, e.port),
            })
            .collect();
        Pool {
            balancer: Balancer::new(Policy::from(&service.balance), targets),
            endpoints,
            hosts,
            stats,
            conns,
            panic_threshold_percent: service.panic_threshold_percent,
            zone,
        }
    }

    /// Picks an endpoint: among those that may take new requests (not
    /// unhealthy, not draining, not ejected as an outlier; those of the
    /// node's zone when it has any, see [`balance::preferred_zone`]), or among all but
    /// the draining ones when too few may (the panic threshold: better to
    /// try a suspect endpoint than to fail everything). A draining endpoint
    /// was taken out of rotation on purpose and never gets new requests.
    ///
    /// `avoid` (the endpoint a retry's previous try failed on) is skipped
    /// when another endpoint is available.
    pub fn pick(&self, hash: Option<u64>, avoid: Option<usize>) -> Option<usize> {
        let now = outlier::now();
        let routable = |id: usize| {
            matches!(self.endpoints[id].health, Health::Healthy | Health::Unknown)
                && !self.hosts[id].is_ejected(now)
        };
        let draining = |id: usize| self.endpoints[id].health == Health::Draining;
        let total = (0..self.endpoints.len())
            .filter(|&id| !draining(id))
            .count();
        let up = (0..self.endpoints.len()).filter(|&id| routable(id)).count();
        let panic = up * 100 < usize::from(self.panic_threshold_percent) * total;
        // The node's zone when it has a routable endpoint (the panic
        // threshold looks at the whole service).
        let zone = balance::preferred_zone(
            self.zone.as_deref(),
            (0..self.endpoints.len())
                .filter(|&id| routable(id))
                .map(|id| self.endpoints[id].zone.as_deref()),
        );
        let in_zone =
            |id: usize| zone.is_none_or(|z| self.endpoints[id].zone.as_deref() == Some(z));
        let eligible = |id: usize| (routable(id) && in_zone(id)) || (panic && !draining(id));
        avoid
            .and_then(|avoid| self.balancer.pick(hash, |id| id != avoid && eligible(id)))
            .or_else(|| self.balancer.pick(hash, eligible))
    }

    /// The balancer (for in-flight accounting).
    pub fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

/// A service as the proxy sees it: its settings and endpoint pools.
#[derive(Debug)]
pub struct Upstream {
    /// The service.
    pub service: Service,
    /// Every endpoint.
    pub all: Arc<Pool>,
    /// Labelled subsets used by routes.
    subsets: BTreeMap<Labels, Arc<Pool>>,
    /// Its state that outlives configurations.
    shared: Arc<Shared>,
}

impl Upstream {
    /// The pool for `subset` (every endpoint when empty).
    pub fn pool(&self, subset: &Labels) -> &Arc<Pool> {
        if subset.is_empty() {
            &self.all
        } else {
            self.subsets.get(subset).unwrap_or(&self.all)
        }
    }

    /// Counts a request or connection the circuit breaker refused.
    fn count_circuit_open(&self) {
        self.shared
            .stats
            .circuit_open
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts what a try at `pool`'s endpoint `id` came to, for outlier
    /// detection (if the service has it).
    fn record(&self, pool: &Pool, id: usize, outcome: outlier::Outcome) {
        let Some(config) = &self.service.outlier_detection else {
            return;
        };
        if let Some(ms) = self.shared.hosts.record(&pool.hosts[id], outcome, config) {
            pool.stats[id].ejected();
            info!(
                service = %self.service.name,
                endpoint = %pool.endpoints[id].name,
                ejection_ms = ms,
                "endpoint ejected as an outlier"
            );
        }
    }
}

/// What a listener forwards to, compiled.
#[derive(Debug, Clone)]
pub enum Backend {
    /// HTTP: a router.
    Http(Arc<Router>),
    /// TCP: a service.
    Tcp(String),
}

/// One configuration compiled for forwarding.
#[derive(Debug, Default)]
pub struct Table {
    /// The configuration's revision.
    pub revision: u64,
    /// Listener name → what it forwards to.
    pub listeners: HashMap<String, Backend>,
    /// Service name → upstream.
    pub upstreams: HashMap<String, Arc<Upstream>>,
}

impl Table {
    fn compile(
        config: &NodeConfig,
        services: &Services,
        threads: usize,
        zone: Option<&Arc<str>>,
    ) -> Table {
        let mut subsets: HashMap<&str, Vec<&Labels>> = HashMap::new();
        for route in config.routes.values() {
            for rule in &route.rules {
                for d in &rule.action.destinations {
                    if !d.subset.is_empty() {
                        subsets.entry(&d.service).or_default().push(&d.subset);
                    }
                }
            }
        }
        let mut shared = services.sync(config.services.keys().map(String::as_str));
        // Grouped once: filtering every endpoint per service is quadratic
        // (10 million comparisons at 1,000 services of 10 endpoints).
        let mut by_service: HashMap<&str, Vec<Arc<Endpoint>>> = HashMap::new();
        for e in config.endpoints.values() {
            by_service.entry(&e.service).or_default().push(e.clone());
        }
        let mut upstreams = HashMap::new();
        for service in config.services.values() {
            let shared = shared.remove(&service.name).unwrap_or_default();
            let endpoints = by_service.remove(service.name.as_str()).unwrap_or_default();
            let hosts = shared.hosts.sync(&endpoints);
            let stats = shared
                .endpoints
                .sync(endpoints.iter().map(|e| e.name.as_str()));
            let http2 = matches!(service.protocol, Protocol::Http2 | Protocol::Grpc);
            shared.connections.set_idle_timeout(service.idle_timeout);
            let conns = shared.connections.sync(
                endpoints.iter().map(|e| (e.address.as_str(), e.port)),
                http2,
                threads,
            );
            let members: Vec<Member> = endpoints
                .into_iter()
                .zip(hosts)
                .zip(stats)
                .zip(conns)
                .map(|(((e, h), s), c)| (e, h, s, c))
                .collect();
            let subsets = subsets
                .get(service.name.as_str())
                .into_iter()
                .flatten()
                .map(|subset| {
                    let selected = members
                        .iter()
                        .filter(|(e, ..)| switchyard::label::matches_all(subset, &e.labels))
                        .cloned()
                        .collect();
                    (
                        (*subset).clone(),
                        Arc::new(Pool::new(service, selected, zone.cloned())),
                    )
                })
                .collect();
            upstreams.insert(
                service.name.clone(),
                Arc::new(Upstream {
                    all: Arc::new(Pool::new(service, members, zone.cloned())),
                    subsets,
                    service: service.clone(),
                    shared,
                }),
            );
        }
        // One router per route, shared by the listeners that name it: a
        // route of many hosts takes milliseconds to index.
        let mut routers: HashMap<&str, Arc<Router>> = HashMap::new();
        let listeners = config
            .listeners
            .values()
            .filter_map(|l| {
                let backend = match &l.target {
                    ListenerTarget::Route(r) => Backend::Http(match routers.get(r.as_str()) {
                        Some(router) => router.clone(),
                        None => {
                            let router = Arc::new(Router::new(config.routes.get(r)?));
                            routers.insert(r, router.clone());
                            router
                        }
                    }),
                    ListenerTarget::Service(s) => Backend::Tcp(s.clone()),
                };
                Some((l.name.clone(), backend))
            })
            .collect();
        Table {
            revision: config.revision,
            listeners,
            upstreams,
        }
    }
}

/// The socket a listener needs; a change of any part reopens it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bind {
    addr: SocketAddr,
    protocol: Protocol,
}

/// A listener being served.
struct Open {
    bind: Bind,
    stop: CancellationToken,
}

impl Builtin {
    /// Serves every configuration published on `config` until `shutdown`,
    /// then drains: listeners stop accepting, requests in flight finish
    /// (up to 30 s), idle upstream connections close.
    pub async fn run(
        self,
        mut config: watch::Receiver<Arc<NodeConfig>>,
        shutdown: CancellationToken,
    ) {
        let workers = match workers::Workers::start(self.threads) {
            Ok(w) => w,
            Err(error) => {
                warn!(%error, threads = self.threads, "cannot start the proxy threads; serving on the agent's runtime");
                workers::Workers::start(0).expect("no thread to start")
            }
        };
        let backlog = self.backlog.unwrap_or_else(default_backlog);
        let tables = watch::Sender::new(Arc::new(Table::default()));
        let mut prune = tokio::time::interval(PRUNE_EVERY);
        let mut open: HashMap<String, Open> = HashMap::new();
        let mut tasks = JoinSet::new();
        loop {
            let current = config.borrow_and_update().clone();
            // Counters of listeners that left the configuration go; those
            // of new ones are created when they open.
            self.listeners
                .sync(current.listeners.keys().map(String::as_str));
            tables.send_replace(Arc::new(Table::compile(
                &current,
                &self.services,
                workers.count(),
                self.zone.as_ref(),
            )));
            {
                // Held while sockets open and close, so that a preflight
                // check never tries to bind what the proxy is binding.
                let mut bound = self.bound.lock().expect("bound listeners");
                let serving = Serving {
                    tables: &tables,
                    stats: &self.listeners,
                    upstream_tasks: &self.upstream_tasks,
                    workers: &workers,
                    shutdown: &shutdown,
                    backlog,
                };
                reconcile(&current, &mut open, &mut tasks, &serving);
                *bound = open.values().map(|l| l.bind.addr).collect();
            }
            debug!(
                revision = current.revision,
                listeners = open.len(),
                "proxy configured"
            );
            // Until the next change (or a listener task ends): whether to
            // stop.
            let stop = loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break true,
                    changed = config.changed() => break changed.is_err(),
                    _ = prune.tick() => {
                        // Connections idle for long are closed even when no
                        // request comes to take (and drop) them.
                        self.services
                            .close_connections(|since, timeout| since.elapsed() < timeout);
                    }
                    Some(done) = tasks.join_next(), if !tasks.is_empty() => {
                        if let Err(error) = done {
                            warn!(%error, "listener task failed");
                        }
                        break false;
                    }
                }
            };
            if stop {
                break;
            }
        }
        for (_, l) in open.drain() {
            l.stop.cancel();
        }
        while tasks.join_next().await.is_some() {}
        // The listeners have drained: close the upstream connections left
        // idle and wait for the HTTP/2 ones' tasks (busy ones end with their
        // request).
        drop(tables);
        self.services.close_connections(|_, _| false);
        self.upstream_tasks.close();
        if tokio::time::timeout(DRAIN, self.upstream_tasks.wait())
            .await
            .is_err()
        {
            debug!("upstream connections still open at shutdown");
        }
        workers.stop().await;
    }
}

/// What the listeners [`reconcile`] opens are served with.
struct Serving<'a> {
    tables: &'a watch::Sender<Arc<Table>>,
    stats: &'a ByName<ListenerStats>,
    upstream_tasks: &'a TaskTracker,
    workers: &'a workers::Workers,
    shutdown: &'a CancellationToken,
    /// The listen backlog of new listeners.
    backlog: u32,
}

/// Opens, keeps and closes listeners so that exactly the configured ones run.
fn reconcile(
    config: &NodeConfig,
    open: &mut HashMap<String, Open>,
    tasks: &mut JoinSet<()>,
    serving: &Serving<'_>,
) {
    let Serving {
        tables,
        stats,
        upstream_tasks,
        workers,
        shutdown,
        backlog,
    } = serving;
    open.retain(|name, l| {
        let wanted = config.listeners.get(name).map(|c| Bind {
            addr: SocketAddr::new(c.address, c.port),
            protocol: c.protocol,
        });
        let keep = wanted == Some(l.bind);
        if !keep {
            info!(listener = %name, addr = %l.bind.addr, "closing listener; draining its connections");
            l.stop.cancel();
        }
        keep
    });
    for (name, l) in &config.listeners {
        if open.contains_key(name) {
            continue;
        }
        let bind = Bind {
            addr: SocketAddr::new(l.address, l.port),
            protocol: l.protocol,
        };
        let listener = match listen(bind.addr, *backlog) {
            Ok(l) => l,
            Err(error) => {
                // Retried at the next configuration change.
                warn!(listener = %name, addr = %bind.addr, %error, "cannot open listener");
                continue;
            }
        };
        info!(listener = %name, addr = %bind.addr, protocol = ?bind.protocol, "listening");
        let stop = shutdown.child_token();
        let ctx = Context {
            listener: name.clone(),
            tables: tables.subscribe(),
            stats: stats.get(name),
            upstream_tasks: (*upstream_tasks).clone(),
        };
        // Every thread accepts on its own handle of the socket, and keeps
        // or hands over what it accepts (see `workers::Lane`).
        let lanes = Lane::all(ctx.stats.open_by_thread(workers.count()));
        workers.spawn_each(tasks, lanes, |lane| {
            let (ctx, token) = (ctx.clone(), stop.clone());
            let listener = listener.try_clone();
            let protocol = bind.protocol;
            async move {
                let listener = match listener.and_then(tokio::net::TcpListener::from_std) {
                    Ok(l) => l,
                    Err(error) => {
                        warn!(listener = %ctx.listener, %error, "cannot serve listener");
                        return;
                    }
                };
                match protocol {
                    Protocol::Tcp => tcp::serve(listener, lane, ctx, token).await,
                    _ => http::serve(listener, lane, ctx, token).await,
                }
            }
        });
        open.insert(name.clone(), Open { bind, stop });
    }
}

/// A non-blocking socket listening on `addr` with a queue of `backlog`
/// connections (std's `TcpListener::bind` has no say in it), with
/// `SO_REUSEADDR` as std sets it, so that a restarted agent can bind again
/// while its old connections linger.
fn listen(addr: SocketAddr, backlog: u32) -> std::io::Result<std::net::TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(
        Domain::for_address(addr),
        Type::STREAM,
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())?;
    socket.listen(i32::try_from(backlog).unwrap_or(i32::MAX))?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// What a listener's connections need.
#[derive(Debug, Clone)]
struct Context {
    listener: String,
    tables: watch::Receiver<Arc<Table>>,
    /// The listener's counters, kept across configurations.
    stats: Arc<ListenerStats>,
    /// Where upstream HTTP/2 connection tasks run.
    upstream_tasks: TaskTracker,
}

impl Context {
    /// The table new requests and connections use.
    fn table(&self) -> Arc<Table> {
        self.tables.borrow().clone()
    }
}

/// A small, fast, non-cryptographic random number (request ids, weighted
/// picks, backoff jitter), from fastrand's per-thread generator.
pub(crate) fn random() -> u64 {
    fastrand::u64(..)
}
