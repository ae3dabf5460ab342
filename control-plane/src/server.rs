//! The control-plane server: binds the gRPC port, serves the operator API,
//! gRPC health and reflection, runs the store's upkeep, and answers
//! Prometheus scrapes on its metrics port, until shutdown.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::pb;
use switchyard::tls::{self, ServerFiles, ServerTls};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{self, Tokens};
use crate::fanout;
use crate::fanout::Head;
use crate::grpc::Operator;
use crate::health::{self, Reporter};
use crate::limit;
use crate::metrics;
use crate::nodes::Registry;
use crate::store::{self, Breaker, Store, Timed};
use crate::sync::Agents;

/// The store as the server's services see it: timed, behind the circuit.
type Served<S> = Breaker<Timed<S>>;

/// Everything the server needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address of the gRPC port.
    pub listen: SocketAddr,
    /// `sqlite://path` or `postgres://…`.
    pub database_url: String,
    /// Revisions kept in the change log; older ones are compacted.
    pub change_log_retention: u64,
    /// How often the change log is compacted.
    pub compaction_interval: Duration,
    /// How often the store's revision is re-read, to notice other replicas' writes.
    pub poll_interval: Duration,
    /// This replica's name in node status; empty means its listen address.
    pub replica: String,
    /// A node silent for this long is marked disconnected.
    pub node_lease: Duration,
    /// How often node status (connected, applied revision, nacks) is written.
    pub node_status_interval: Duration,
    /// How agent pushes are batched.
    pub fanout: fanout::Timing,
    /// At most how often agents' health reports are written (one
    /// transaction each): a report after a quiet spell is written at once,
    /// and under load the reports of one interval share a transaction.
    pub health_flush_interval: Duration,
    /// How flapping endpoints are damped.
    pub damping: health::Damping,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); `None`
    /// serves no metrics. The library default is `None`, so that servers
    /// started in-process do not contend for one port; `switchyard-cp`
    /// defaults to [`metrics::DEFAULT_LISTEN`].
    pub metrics_listen: Option<SocketAddr>,
    /// Authentication and stream limits.
    pub auth: auth::Config,
    /// With authentication on: when the store holds no token, create the
    /// first admin token and write its secret to this new file.
    pub bootstrap_token_file: Option<PathBuf>,
    /// The gRPC port's certificate, key and (for mutual TLS) client CA;
    /// `None` serves plaintext. The files are re-read when they change.
    pub tls: Option<ServerFiles>,
    /// How long a client may take to finish its TLS handshake, or on a
    /// plaintext port to send the HTTP/2 preface.
    pub handshake_timeout: Duration,
    /// How often an HTTP/2 PING is sent to each client connection (when it
    /// sent nothing meanwhile); `None` sends none.
    pub keepalive_interval: Option<Duration>,
    /// How long a client may take to answer a PING before its connection
    /// is closed (and its streams, e.g. an agent's, end).
    pub keepalive_timeout: Duration,
    /// Largest request message a client may send (an Apply of many
    /// resources), in bytes; a larger one is refused with
    /// `RESOURCE_EXHAUSTED` naming the limit.
    pub max_request_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            database_url: "sqlite://switchyard.db".into(),
            change_log_retention: 100_000,
            compaction_interval: Duration::from_secs(60),
            poll_interval: Duration::from_millis(500),
            replica: String::new(),
            node_lease: Duration::from_secs(30),
            node_status_interval: Duration::from_secs(1),
            fanout: fanout::Timing::default(),
            health_flush_interval: Duration::from_millis(100),
            damping: health::Damping::default(),
            metrics_listen: None,
            auth: auth::Config::default(),
            bootstrap_token_file: None,
            tls: None,
            handshake_timeout: Duration::from_secs(10),
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_timeout: Duration::from_secs(10),
            max_request_bytes: limit::DEFAULT_MAX_REQUEST_BYTES,
        }
    }
}

/// Why the server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] store::Error),
    /// The port could not be bound.
    #[error("binding {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    /// Authentication is on and no principal could ever call.
    #[error("{0}")]
    Auth(String),
    /// The TLS files could not be loaded.
    #[error("TLS: {0}")]
    Tls(#[from] tls::Error),
}

/// Opens the store, binds `config.listen` (and `config.metrics_listen`) and
/// serves until `shutdown` is cancelled; in-flight calls finish before it
/// returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), Error> {
    let store = store::Any::connect(&config.database_url).await?;
    let listener = switchyard::http::bind(config.listen, switchyard::http::default_backlog())
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let result = serve(listener, store.clone(), &config, shutdown).await;
    store.close().await;
    result
}

/// Serves on an already bound `listener` with an open `store`; binds the
/// metrics port itself, if `config.metrics_listen` asks for one.
pub async fn serve<S: Store>(
    listener: TcpListener,
    store: S,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let metrics = match config.metrics_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { addr, source })?,
        ),
        None => None,
    };
    let listeners = Listeners {
        grpc: listener,
        metrics,
    };
    serve_with(listeners, store, config, shutdown).await
}

/// The sockets a server answers on, bound by the caller.
#[derive(Debug)]
pub struct Listeners {
    /// The gRPC port.
    pub grpc: TcpListener,
    /// The metrics port, if any (`config.metrics_listen` is then ignored).
    pub metrics: Option<TcpListener>,
}

/// Serves on already bound `listeners` with an open `store`.
pub async fn serve_with<S: Store>(
    listeners: Listeners,
    store: S,
    config: &Config,
    shutdown: CancellationToken,
) -> Result<(), Error> {
    let Listeners {
        grpc: listener,
        metrics: metrics_listener,
    } = listeners;
    // Before anything else: bad TLS files are a configuration error.
    let tls = config.tls.clone().map(ServerTls::load).transpose()?;
    // Every store call of this server is timed, for the metrics, and fails
    // fast while the upkeep finds the store unreachable.
    let latency = Arc::new(store::Latency::default());
    let store: Arc<Served<S>> = Arc::new(Breaker::new(Timed::new(store, latency.clone())));
    let head = Head::new(store.revision().await?);
    let tokens = Arc::new(Tokens::default());
    if config.auth.enforce
        && let Some(path) = &config.bootstrap_token_file
    {
        auth::bootstrap(store.as_ref(), path)
            .await
            .map_err(|e| match e {
                store::Error::Bootstrap(reason) => Error::Auth(reason),
                e => Error::Store(e),
            })?;
    }
    tokens.reload(store.as_ref()).await?;
    if config.auth.enforce && tokens.is_empty() {
        return Err(Error::Auth(
            "authentication is on and the store holds no token: pass \
             --bootstrap-token-file PATH to create the first admin token"
                .into(),
        ));
    }
    let addr = listener.local_addr().map_err(|source| Error::Bind {
        addr: config.listen,
        source,
    })?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<pb::operator_service_server::OperatorServiceServer<Operator<Served<S>>>>()
        .await;
    health
        .set_serving::<pb::agent_service_server::AgentServiceServer<Agents<Served<S>>>>()
        .await;
    health
        .set_serving::<pb::token_service_server::TokenServiceServer<auth::service::TokenService<Served<S>>>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let requests = Arc::new(metrics::Requests::default());
    let operator = pb::operator_service_server::OperatorServiceServer::new(
        Operator::new(store.clone(), head.clone(), shutdown.clone())
            .with_requests(requests.clone()),
    )
    .max_decoding_message_size(config.max_request_bytes);

    let token_service = pb::token_service_server::TokenServiceServer::new(
        auth::service::TokenService::new(store.clone(), tokens.clone()),
    )
    .max_decoding_message_size(config.max_request_bytes);
    let state = tokio::sync::watch::Sender::new(Arc::new(fanout::load(store.as_ref()).await?));
    let replica = if config.replica.is_empty() {
        addr.to_string()
    } else {
        config.replica.clone()
    };
    let registry = Arc::new(Registry::new(
        replica.clone(),
        config.node_lease,
        config.node_status_interval,
    ));
    let reporter = Arc::new(Reporter::new(
        config.damping,
        config.health_flush_interval,
        config.node_lease,
    ));
    let agents = pb::agent_service_server::AgentServiceServer::new(Agents::new(
        store.clone(),
        state.subscribe(),
        registry.clone(),
        reporter.clone(),
        head.clone(),
        shutdown.clone(),
    ))
    .max_decoding_message_size(config.max_request_bytes);

    let sources = metrics::Sources {
        replica,
        registry: registry.clone(),
        health: reporter.clone(),
        head: head.clone(),
        state: state.subscribe(),
        requests,
        store: latency,
    };
    let metrics_addr = metrics_listener.as_ref().map(TcpListener::local_addr);
    let store_up = store.flag();
    let ready = {
        let store_up = store_up.clone();
        move || match store_up.load(Ordering::Relaxed) {
            true => Ok(()),
            false => Err("the store cannot be reached".to_owned()),
        }
    };
    let metrics = async {
        if let Some(listener) = metrics_listener {
            metrics::serve(listener, move || sources.render(), ready, shutdown.clone()).await;
        }
    };
    if let Some(Ok(metrics)) = metrics_addr {
        info!(addr = %metrics, "serving metrics at /metrics");
    }
    info!(%addr, revision = head.current(), tls = tls.is_some(), "listening");
    let server = tonic::transport::Server::builder()
        // A dead peer (host gone, path cut) is noticed and its streams
        // freed within interval + timeout: 40 s by default.
        .http2_keepalive_interval(config.keepalive_interval)
        .http2_keepalive_timeout(Some(config.keepalive_timeout))
        .layer(auth::Layer::new(config.auth.clone(), tokens.clone()))
        // After authentication: an unauthenticated client learns nothing,
        // not even the limit.
        .layer(limit::Layer::new(config.max_request_bytes))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(operator)
        .add_service(agents)
        .add_service(token_service)
        .serve_with_incoming_shutdown(
            // TLS handshakes (if any) and TCP_NODELAY, which agents' small
            // pushes and acks need, happen there.
            tls::incoming(listener, tls.clone(), config.handshake_timeout),
            shutdown.clone().cancelled_owned(),
        );
    // Certificate rotation: new connections get the files' current pair.
    let rotation = async {
        if let Some(tls) = &tls {
            tls.watch(shutdown.clone()).await;
        }
    };

    let services = [
        "",
        <pb::operator_service_server::OperatorServiceServer<Operator<Served<S>>> as tonic::server::NamedService>::NAME,
        <pb::agent_service_server::AgentServiceServer<Agents<Served<S>>> as tonic::server::NamedService>::NAME,
        <pb::token_service_server::TokenServiceServer<auth::service::TokenService<Served<S>>> as tonic::server::NamedService>::NAME,
    ];
    let watched = Watched {
        head: &head,
        tokens: &tokens,
        health: &health,
        services: &services,
    };
    let upkeep = upkeep(store.as_ref(), watched, config, &shutdown);
    let follow = fanout::follow(store.as_ref(), &state, &head, config.fanout, &shutdown);
    let nodes = registry.run(store.as_ref(), &shutdown);
    let health = reporter.run(store.as_ref(), &head, state.subscribe(), &shutdown);
    let (result, (), (), (), (), (), ()) =
        tokio::join!(server, upkeep, follow, nodes, health, metrics, rotation);
    // Sessions recorded their nodes as disconnected when their streams ended.
    registry.flush(store.as_ref()).await;
    info!("stopped");
    Ok(result?)
}

/// What [`upkeep`] keeps up to date.
struct Watched<'a> {
    head: &'a Head,
    tokens: &'a Tokens,
    health: &'a tonic_health::server::HealthReporter,
    services: &'a [&'static str],
}

/// How long one poll of the store may take before the store counts as
/// unreachable: health turns `NOT_SERVING` within a poll interval more.
const POLL_TIMEOUT: Duration = Duration::from_secs(1);

/// Follows the store's revision and tokens (writes by other replicas),
/// reports the store's reachability as this server's gRPC health and
/// readiness, and compacts the change log, until shutdown.
async fn upkeep<S: Store>(
    store: &Breaker<S>,
    watched: Watched<'_>,
    config: &Config,
    shutdown: &CancellationToken,
) {
    let mut poll = tokio::time::interval(config.poll_interval);
    let mut compaction = tokio::time::interval(config.compaction_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    compaction.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = poll.tick() => {
                // Around the circuit: this poll is what closes it again.
                let read = tokio::time::timeout(POLL_TIMEOUT, store.inner().revision()).await;
                let failure = match read {
                    Ok(Ok(rev)) => {
                        watched.head.advance(rev);
                        None
                    }
                    Ok(Err(error)) => Some(error.to_string()),
                    Err(_) => Some(format!("no answer within {POLL_TIMEOUT:?}")),
                };
                let up = failure.is_none();
                if store.set_up(up) != up {
                    let status = match &failure {
                        None => {
                            info!("the store answers again: serving");
                            tonic_health::ServingStatus::Serving
                        }
                        Some(error) => {
                            warn!(%error, "the store cannot be reached: not serving, calls fail fast");
                            tonic_health::ServingStatus::NotServing
                        }
                    };
                    for service in watched.services {
                        watched.health.set_service_status(*service, status).await;
                    }
                } else if let Some(error) = &failure {
                    // Said at WARN once per outage, above.
                    tracing::debug!(%error, "the store still cannot be reached");
                }
                // Tokens created or revoked through another replica.
                if up && let Err(error) = watched.tokens.refresh(store).await {
                    warn!(%error, "reading the store's tokens");
                }
            }
            _ = compaction.tick() => match store.compact(config.change_log_retention).await {
                Ok(horizon) => tracing::debug!(horizon, "compacted the change log"),
                Err(error) => warn!(%error, "compacting the change log"),
            },
        }
    }
}
