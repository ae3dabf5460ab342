//! The sync client: one `AgentService.Sync` stream to one control plane at a
//! time, failing over between several.
//!
//! The agent publishes the configuration it serves on a `watch` channel. At
//! start it publishes the one saved on disk, before connecting anywhere, so
//! a node restarted while every control plane is down still serves (static
//! stability). Each Snapshot or Delta is validated as a whole, saved, then
//! published and acknowledged; a refused one is `Nack`ed and the previous
//! configuration stays live.

mod backoff;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read as _;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use switchyard::pb;
use switchyard::pb::agent_service_client::AgentServiceClient;
use switchyard::pb::sync_request::Message as Out;
use switchyard::pb::sync_response::Message as In;
use switchyard::tls::{self, ClientFiles};
use switchyard::validate::{self, Invalid, Violations};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::{CancellationToken, DropGuard};
use tonic::metadata::{Ascii, MetadataValue};
use tracing::{debug, error, info, warn};

use crate::driver::Driver;
use crate::health::{self, Results};
use crate::persist;
use crate::registration::{OnShutdown, Registration};
use crate::state::{self, Candidate, NodeConfig, Store};

pub use backoff::Backoff;

/// Messages waiting to go out on one stream. A handful is plenty: the agent
/// answers one Snapshot/Delta at a time and otherwise only sends heartbeats;
/// the bound keeps a control plane that stops reading from growing it.
const OUTBOUND_BUFFER: usize = 16;
/// How long the control plane may take to answer a Hello (it waits up to
/// 10 s for the Hello itself, then reads the store once).
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// HTTP/2 PING interval and timeout: they detect a dead control plane (or
/// path to it) on an otherwise quiet stream.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(10);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest message accepted from a control plane: a Snapshot of a big node.
pub const MAX_MESSAGE_BYTES: usize = 64 << 20;
/// How long a clean shutdown waits for the control plane to drain or
/// deregister the node's registrations.
const LEAVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most endpoints in one health report: a node re-sending thousands of
/// endpoints' health after reconnecting does it in several messages.
const MAX_REPORT_ENDPOINTS: usize = 1000;
/// Longest `Nack.error` sent; a configuration with thousands of problems is
/// reported by its first ones.
const MAX_NACK_ERROR: usize = 8 << 10;
/// Largest token file read: a bearer token is well under a kilobyte.
const MAX_TOKEN_BYTES: u64 = 16 << 10;

/// Everything the agent needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// This node's id (same rules as resource names).
    pub node_id: String,
    /// This node's labels, matched against listeners' node selectors.
    pub labels: BTreeMap<String, String>,
    /// Control-plane addresses, e.g. `http://127.0.0.1:7700` or
    /// `https://cp.example:7700`, tried in order.
    pub control_planes: Vec<String>,
    /// The CA to check `https://` control planes with, and the node's
    /// client certificate for mutual TLS; read at each connection, so a
    /// rotated certificate is used from the next one on.
    pub tls: ClientFiles,
    /// A file holding the agent's bearer token, sent as
    /// `authorization: Bearer <token>` with every call; read at each
    /// connection. In a file, not a flag, so that it stays out of process
    /// listings.
    pub token_file: Option<PathBuf>,
    /// Where the last applied configuration is kept.
    pub data_dir: PathBuf,
    /// Shortest delay between two attempts to reach a control plane.
    pub backoff_base: Duration,
    /// Longest delay between two attempts.
    pub backoff_max: Duration,
    /// How often the agent sends a heartbeat on its stream.
    pub heartbeat_interval: Duration,
    /// How long opening a connection to a control plane may take.
    pub connect_timeout: Duration,
    /// How often the agent re-sends the health of every endpoint it checks,
    /// even unchanged: it repairs anything a control plane lost.
    pub health_refresh: Duration,
    /// Service instances of this node to register each time it connects
    /// (the local API may add and remove instances later).
    pub registration: Option<Registration>,
    /// While the configuration served could not be saved to disk (e.g. the
    /// disk is full), how often saving it is tried again.
    pub persist_retry: Duration,
    /// The data plane the node's configurations are applied to; one it
    /// refuses is `Nack`ed. `None`: configurations are only published (on
    /// [`Agent::config`]).
    pub driver: Option<Arc<dyn Driver>>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            node_id: String::new(),
            labels: BTreeMap::new(),
            control_planes: vec!["http://127.0.0.1:7700".into()],
            tls: ClientFiles::default(),
            token_file: None,
            data_dir: PathBuf::from("/var/lib/switchyard-agent"),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            heartbeat_interval: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(2),
            health_refresh: Duration::from_secs(60),
            registration: None,
            persist_retry: Duration::from_secs(5),
            driver: None,
        }
    }
}

impl Config {
    /// Checks every field, reporting every problem at once.
    pub fn validate(&self) -> Result<(), Invalid> {
        let mut v = Violations::new();
        validate::name(&mut v, "node_id", &self.node_id);
        validate::labels(&mut v, "labels", self.labels.iter());
        if self.control_planes.is_empty() {
            v.push("control_planes", "at least one control plane is required");
        }
        // A TLS file's problem is reported once, whichever addresses use it.
        let mut tls_fields = BTreeSet::new();
        for (i, addr) in self.control_planes.iter().enumerate() {
            if let Err(reason) = check_address(addr) {
                v.push(format!("control_planes[{i}]"), reason);
            } else if let Err(error) = self.tls.endpoint(addr) {
                let field = match error.file() {
                    Some(tls::File::CaCert | tls::File::ClientCa) => "tls.ca_cert".to_owned(),
                    Some(tls::File::Cert) => "tls.cert".to_owned(),
                    Some(tls::File::Key) => "tls.key".to_owned(),
                    None => format!("control_planes[{i}]"),
                };
                if tls_fields.insert(field.clone()) {
                    v.push(field, error);
                }
            }
        }
        if let Some(path) = &self.token_file
            && let Err(reason) = read_token(path)
        {
            v.push("token_file", reason);
        }
        if self.data_dir.as_os_str().is_empty() {
            v.push("data_dir", "must not be empty");
        }
        for (field, d) in [
            ("backoff_base", self.backoff_base),
            ("backoff_max", self.backoff_max),
            ("heartbeat_interval", self.heartbeat_interval),
            ("connect_timeout", self.connect_timeout),
            ("health_refresh", self.health_refresh),
            ("persist_retry", self.persist_retry),
        ] {
            if d.is_zero() {
                v.push(field, "must be positive");
            }
        }
        if self.backoff_max < self.backoff_base {
            v.push("backoff_max", "must not be below backoff_base");
        }
        v.finish(())
    }
}

/// Checks a control-plane address: an `http://host:port` or
/// `https://host:port` URI.
fn check_address(addr: &str) -> Result<(), String> {
    let uri: tonic::transport::Uri = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not a URI: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(format!("{addr:?} must start with http:// or https://")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("{addr:?} has no host"));
    }
    if uri.path_and_query().is_some_and(|p| p.as_str() != "/") {
        return Err(format!("{addr:?} must not have a path"));
    }
    Ok(())
}

/// The `authorization` value for the token in `path`: `Bearer <token>`,
/// with the file's content trimmed. The reason names the file and never
/// quotes it.
fn read_token(path: &Path) -> Result<MetadataValue<Ascii>, String> {
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(MAX_TOKEN_BYTES + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("{}: cannot read it: {e}", path.display()))?;
    if bytes.len() as u64 > MAX_TOKEN_BYTES {
        return Err(format!(
            "{}: larger than {MAX_TOKEN_BYTES} bytes, not a token",
            path.display()
        ));
    }
    let unprintable = || {
        format!(
            "{}: the token must be printable ASCII on one line",
            path.display()
        )
    };
    let token = std::str::from_utf8(&bytes)
        .map_err(|_| unprintable())?
        .trim();
    if token.is_empty() {
        return Err(format!("{}: holds no token", path.display()));
    }
    let mut value: MetadataValue<Ascii> = format!("Bearer {token}")
        .parse()
        .map_err(|_| unprintable())?;
    // A secret: HTTP/2 header compression must never index it.
    value.set_sensitive(true);
    Ok(value)
}

/// `message` as a request carrying `token`, if any.
fn authorized<T>(message: T, token: Option<&MetadataValue<Ascii>>) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if let Some(token) = token {
        request
            .metadata_mut()
            .insert("authorization", token.clone());
    }
    request
}

/// What went wrong starting the agent or on one stream.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(#[from] Invalid),
    /// The data directory could not be created.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// No connection to the control plane could be opened. The message
    /// spells out the causes: tonic's own says only "transport error".
    #[error("connecting: {}", causes(.0))]
    Connect(tonic::transport::Error),
    /// The TLS files could not be used (they may be mid-rotation: tried
    /// again at the next connection).
    #[error("TLS: {0}")]
    Tls(#[from] tls::Error),
    /// The token file could not be used (tried again at the next
    /// connection).
    #[error("token file {0}")]
    Token(String),
    /// The control plane refused or failed the stream.
    #[error("stream: {}: {}", .0.code(), .0.message())]
    Stream(#[source] tonic::Status),
    /// The control plane ended the stream.
    #[error("the control plane ended the stream")]
    Ended,
    /// The sync task panicked or was aborted.
    #[error("sync task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl Error {
    /// Whether trying again (another control plane, later) may work; errors
    /// of the agent's own configuration and task will not.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Error::Connect(_) | Error::Tls(_) | Error::Token(_) | Error::Stream(_) | Error::Ended
        )
    }
}

/// An error and its causes, `outer: inner: innermost`.
fn causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    let mut last = out.clone();
    while let Some(e) = next {
        // Layers often repeat their inner error's words; say them once.
        let text = e.to_string();
        if text != last {
            out.push_str(": ");
            out.push_str(&text);
        }
        last = text;
        next = e.source();
    }
    out
}

/// Counters of what the agent did, for metrics and tests.
#[derive(Debug, Default)]
pub struct Stats {
    /// Streams opened.
    pub connects: AtomicU64,
    /// Streams that could not be opened (connection, TLS, token, refusal)
    /// or that failed once open.
    pub sync_failures: AtomicU64,
    /// Snapshots received.
    pub snapshots: AtomicU64,
    /// Deltas received.
    pub deltas: AtomicU64,
    /// Configurations applied (Acks sent or being sent).
    pub acks: AtomicU64,
    /// Configurations refused (Nacks sent or being sent).
    pub nacks: AtomicU64,
    /// Snapshots asked for after a gap (Resyncs sent or being sent).
    pub resyncs: AtomicU64,
    /// Registrations the control plane refused.
    pub registration_failures: AtomicU64,
    /// Attempts to save the configuration to disk that failed.
    pub persist_failures: AtomicU64,
    /// Held only to read or replace the value, never across an `.await`.
    connected_to: Mutex<Option<String>>,
    /// Why the configuration served is not saved to disk: its revision and
    /// the error; `None` when it is. Held only to read or replace it.
    unsaved: Mutex<Option<(u64, String)>>,
}

impl Stats {
    /// The control plane the agent has a stream with, if any.
    pub fn connected_to(&self) -> Option<String> {
        self.connected_to
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The configuration served but not saved to disk, if any: its
    /// revision and why saving it failed.
    pub fn unsaved(&self) -> Option<(u64, String)> {
        self.unsaved
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the outcome of saving; returns whether it changed.
    fn set_unsaved(&self, unsaved: Option<(u64, String)>) -> bool {
        let mut current = self.unsaved.lock().unwrap_or_else(|e| e.into_inner());
        let changed = *current != unsaved;
        *current = unsaved;
        changed
    }

    fn set_connected_to(&self, addr: Option<&str>) {
        *self.connected_to.lock().unwrap_or_else(|e| e.into_inner()) = addr.map(str::to_owned);
    }

    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// A running agent: its sync task and what it publishes.
#[derive(Debug)]
pub struct Agent {
    config: watch::Receiver<Arc<NodeConfig>>,
    health: watch::Receiver<Results>,
    /// The node's registrations; a change is registered at once.
    registrations: Arc<watch::Sender<Option<Registration>>>,
    stats: Arc<Stats>,
    check_stats: Arc<health::Checks>,
    control_planes: Arc<[String]>,
    /// A child of the caller's token: cancelling the caller's stops the
    /// agent, and [`Agent::stop`] stops only the agent.
    shutdown: CancellationToken,
    /// Cancels `shutdown` when the agent is dropped, so the sync task never
    /// outlives its owner.
    _guard: DropGuard,
    task: JoinHandle<()>,
    checks: JoinHandle<()>,
}

impl Agent {
    /// Loads the saved configuration, publishes it, and starts syncing with
    /// the control planes until `shutdown` is cancelled.
    ///
    /// A missing saved configuration starts empty at revision 0, and so does
    /// an unreadable or invalid one (with a warning): the control plane will
    /// send a Snapshot.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Agent, Error> {
        config.validate()?;
        // Blocking file system calls: acceptable once, at start.
        std::fs::create_dir_all(&config.data_dir).map_err(|source| Error::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let store = load(&config);
        info!(
            node = %config.node_id,
            revision = store.revision(),
            resources = store.len(),
            "loaded saved configuration"
        );
        if let Some(driver) = &config.driver {
            driver.restore(&store.config());
        }
        let (publish, subscribe) = watch::channel(store.config());
        let (results, health) = watch::channel(Results::new());
        let registrations = Arc::new(watch::Sender::new(config.registration.clone()));
        let stats = Arc::new(Stats::default());
        let check_stats = Arc::new(health::Checks::default());
        let control_planes = config.control_planes.clone().into();
        let shutdown = shutdown.child_token();
        // Health checks follow the configuration the node serves, whether
        // it came from disk or from a control plane.
        let checks = tokio::spawn(health::run(
            config.node_id.clone(),
            subscribe.clone(),
            results,
            check_stats.clone(),
            shutdown.clone(),
        ));
        let client = Client {
            instance: persist::instance_id(&config.data_dir),
            config,
            store,
            publish,
            health: health.clone(),
            registrations: registrations.subscribe(),
            stats: stats.clone(),
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(client.run());
        Ok(Agent {
            config: subscribe,
            health,
            registrations,
            stats,
            check_stats,
            control_planes,
            _guard: shutdown.clone().drop_guard(),
            shutdown,
            task,
            checks,
        })
    }

    /// The configuration the node serves; it changes with each applied one.
    pub fn config(&self) -> watch::Receiver<Arc<NodeConfig>> {
        self.config.clone()
    }

    /// What the health checks of this node's endpoints concluded.
    pub fn health(&self) -> watch::Receiver<Results> {
        self.health.clone()
    }

    /// The node's registrations: replacing them (e.g. from the local API)
    /// registers the new set with the control plane at once.
    pub fn registrations(&self) -> Arc<watch::Sender<Option<Registration>>> {
        self.registrations.clone()
    }

    /// The agent's counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Whether the node serves a configuration: one loaded from disk or
    /// applied from a control plane (the agent's `/ready` probe). Until
    /// then, the reason it is not ready.
    pub fn readiness(&self) -> impl Fn() -> Result<(), String> + Send + Sync + 'static {
        let config = self.config.clone();
        let stats = self.stats.clone();
        move || {
            if config.borrow().revision > 0 || stats.acks.load(Ordering::Relaxed) > 0 {
                Ok(())
            } else {
                Err(
                    "no configuration yet: none saved on disk, none applied from a control plane"
                        .into(),
                )
            }
        }
    }

    /// How many health checks of each endpoint ran and failed.
    pub fn checks(&self) -> Arc<health::Checks> {
        self.check_stats.clone()
    }

    /// The control planes the agent syncs with, in the order it tries them.
    pub fn control_planes(&self) -> Arc<[String]> {
        self.control_planes.clone()
    }

    /// Stops syncing and waits until the sync task has ended.
    pub async fn stop(self) -> Result<(), Error> {
        self.shutdown.cancel();
        self.wait().await
    }

    /// Waits until the sync task ends, i.e. until the token given to
    /// [`Agent::start`] is cancelled. Dropping this future stops the agent.
    pub async fn wait(self) -> Result<(), Error> {
        let Agent {
            task,
            checks,
            _guard,
            ..
        } = self;
        let synced = task.await;
        checks.await?;
        Ok(synced?)
    }
}

/// The saved configuration, or an empty one when there is none or it cannot
/// be used.
fn load(config: &Config) -> Store {
    let mut store = Store::new();
    let snapshot = match persist::load(&config.data_dir) {
        Ok(Some(snapshot)) => snapshot,
        Ok(None) => return store,
        Err(error) => {
            warn!(%error, "ignoring the saved configuration");
            return store;
        }
    };
    let revision = snapshot.revision;
    if let Err(error) = store.apply_snapshot(snapshot) {
        warn!(revision, %error, "ignoring the saved configuration: invalid");
    }
    store
}

/// What [`Client::session`] ended with.
struct Outcome {
    /// Whether the control plane sent at least one message.
    delivered: bool,
    /// `Ok` on shutdown.
    result: Result<(), Error>,
}

/// The sync task's state.
struct Client {
    /// This agent's instance id (see [`persist::instance_id`]), sent in
    /// every Hello: a reconnect replaces the node's old stream, another
    /// agent with the same node id is refused while that stream lives.
    instance: String,
    config: Config,
    store: Store,
    /// The proxy (and anything else) watches this for the configuration to
    /// serve; a watch keeps only the newest, which is all a reader needs.
    publish: watch::Sender<Arc<NodeConfig>>,
    /// Health check results, reported as they change.
    health: watch::Receiver<Results>,
    /// The node's registrations, registered on each stream and on change.
    registrations: watch::Receiver<Option<Registration>>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
}

impl Client {
    /// Runs streams one after another, failing over between control planes,
    /// until shutdown.
    async fn run(mut self) {
        let mut backoff = Backoff::new(self.config.backoff_base, self.config.backoff_max);
        let addresses = self.config.control_planes.clone();
        for addr in addresses.iter().cycle() {
            let outcome = self.session(addr).await;
            self.stats.set_connected_to(None);
            if self.shutdown.is_cancelled() {
                break;
            }
            match outcome.result {
                Ok(()) => {}
                Err(error) => {
                    Stats::bump(&self.stats.sync_failures);
                    warn!(%addr, %error, "sync failed");
                }
            }
            if outcome.delivered {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            debug!(?delay, "backing off");
            tokio::select! {
                _ = self.shutdown.cancelled() => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        info!(revision = self.store.revision(), "sync stopped");
        self.leave().await;
    }

    /// Registers this node's service instances through `channel`. A refusal
    /// (bad file content, an endpoint owned by another node) is logged and
    /// does not stop syncing: the node keeps serving, and registration is
    /// tried again on the next connection.
    async fn register(
        &mut self,
        channel: &tonic::transport::Channel,
        token: Option<&MetadataValue<Ascii>>,
    ) -> Result<(), Error> {
        let Some(registration) = self.registrations.borrow_and_update().clone() else {
            return Ok(());
        };
        let mut client = AgentServiceClient::new(channel.clone());
        let call = client.register(authorized(registration.request.clone(), token));
        let response = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            response = tokio::time::timeout(OPEN_TIMEOUT, call) => response
                .map_err(|_| Error::Stream(tonic::Status::deadline_exceeded("no answer to register")))?,
        };
        match response {
            Ok(done) => {
                let done = done.into_inner();
                info!(
                    revision = done.revision,
                    endpoints = registration.request.endpoints.len(),
                    "registered this node's services"
                );
                Ok(())
            }
            Err(status) if is_refusal(&status) => {
                Stats::bump(&self.stats.registration_failures);
                warn!(code = ?status.code(), error = %status.message(), "registration refused");
                Ok(())
            }
            Err(status) => Err(Error::Stream(status)),
        }
    }

    /// On a clean shutdown, drains or deregisters this node's registrations
    /// as configured, through the first control plane that answers.
    async fn leave(&self) {
        let Some(registration) = self.registrations.borrow().clone() else {
            return;
        };
        let mode = match registration.on_shutdown {
            OnShutdown::Keep => return,
            OnShutdown::Drain => pb::DeregisterMode::Drain,
            OnShutdown::Deregister => pb::DeregisterMode::Delete,
        };
        let request = pb::DeregisterRequest {
            node_id: self.config.node_id.clone(),
            endpoints: registration.endpoint_names(),
            mode: mode as i32,
        };
        let token = match self.token() {
            Ok(token) => token,
            Err(error) => {
                warn!(%error, "cannot leave: registrations left as they are");
                return;
            }
        };
        let attempt = async {
            for addr in &self.config.control_planes {
                let endpoint = match self.config.tls.endpoint(addr) {
                    Ok(endpoint) => endpoint.connect_timeout(self.config.connect_timeout),
                    Err(error) => {
                        warn!(%addr, %error, "leaving");
                        continue;
                    }
                };
                let result = match endpoint.connect().await {
                    Ok(channel) => AgentServiceClient::new(channel)
                        .deregister(authorized(request.clone(), token.as_ref()))
                        .await
                        .map(|_| ()),
                    Err(e) => Err(tonic::Status::unavailable(causes(&e))),
                };
                match result {
                    Ok(()) => {
                        info!(%addr, ?mode, endpoints = request.endpoints.len(), "left: registrations updated");
                        return;
                    }
                    Err(status) => warn!(%addr, error = %status.message(), "leaving"),
                }
            }
        };
        if tokio::time::timeout(LEAVE_TIMEOUT, attempt).await.is_err() {
            warn!("no control plane answered in time; registrations left as they are");
        }
    }

    /// One stream to `addr`, from connecting to its end.
    async fn session(&mut self, addr: &str) -> Outcome {
        let mut delivered = false;
        let result = self.stream(addr, &mut delivered).await;
        Outcome { delivered, result }
    }

    /// The `authorization` value to send, read from the token file now.
    fn token(&self) -> Result<Option<MetadataValue<Ascii>>, Error> {
        match &self.config.token_file {
            None => Ok(None),
            Some(path) => read_token(path).map(Some).map_err(Error::Token),
        }
    }

    async fn stream(&mut self, addr: &str, delivered: &mut bool) -> Result<(), Error> {
        // Both read afresh at each connection: rotated certificates and
        // tokens are picked up without a restart.
        let token = self.token()?;
        let endpoint = self
            .config
            .tls
            .endpoint(addr)?
            .connect_timeout(self.config.connect_timeout)
            .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
            .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
            .keep_alive_while_idle(true);
        let channel = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            channel = endpoint.connect() => channel.map_err(Error::Connect)?,
        };
        self.register(&channel, token.as_ref()).await?;
        let mut client =
            AgentServiceClient::new(channel.clone()).max_decoding_message_size(MAX_MESSAGE_BYTES);

        let (tx, rx) = mpsc::channel(OUTBOUND_BUFFER);
        let hello = pb::Hello {
            node_id: self.config.node_id.clone(),
            labels: self.config.labels.clone(),
            agent_version: env!("CARGO_PKG_VERSION").into(),
            instance_id: self.instance.clone(),
            last_applied_revision: self.store.revision(),
            resources: self.store.inventory(),
        };
        // The channel is empty and its receiver alive: this cannot fail.
        let _ = tx.try_send(request(Out::Hello(hello)));
        let mut inbound = tokio::select! {
            _ = self.shutdown.cancelled() => return Ok(()),
            // A control plane that accepts the connection but never answers
            // (e.g. its database hangs) must not hold the agent: give up and
            // fail over.
            response = tokio::time::timeout(
                OPEN_TIMEOUT,
                client.sync(authorized(ReceiverStream::new(rx), token.as_ref())),
            ) => {
                response
                    .map_err(|_| Error::Stream(tonic::Status::deadline_exceeded("no answer to hello")))?
                    .map_err(Error::Stream)?
                    .into_inner()
            }
        };
        Stats::bump(&self.stats.connects);
        self.stats.set_connected_to(Some(addr));
        info!(%addr, revision = self.store.revision(), "connected");

        let out = Outbound {
            tx,
            shutdown: self.shutdown.clone(),
        };
        let period = self.config.heartbeat_interval;
        let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // A new stream may reach a replica that knows nothing of this
        // node's reports: it gets the whole current state first.
        let mut reported = Results::new();
        self.report_health(&out, &mut reported).await?;
        let period = self.config.health_refresh;
        let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        refresh.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let period = self.config.persist_retry;
        let mut persist = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        persist.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set by a Resync until a Snapshot arrives, so that Deltas already
        // on the way do not each ask again.
        let mut resyncing = false;
        loop {
            let message = tokio::select! {
                _ = self.shutdown.cancelled() => return Ok(()),
                _ = persist.tick(), if self.stats.unsaved().is_some() => {
                    // The configuration served is not on disk yet: try
                    // again, and tell the control plane when that changes.
                    let revision = self.store.revision();
                    if self.save(revision, self.store.encoded_snapshot()).await {
                        let error = self.stats.unsaved().map(|(_, e)| e).unwrap_or_default();
                        out.send(Out::Persisted(pb::Persisted { revision, error })).await?;
                    }
                    continue;
                }
                _ = heartbeat.tick() => {
                    out.send(Out::Heartbeat(heartbeat_now())).await?;
                    continue;
                }
                // Closed only when the checks stopped, i.e. at shutdown.
                Ok(()) = self.health.changed() => {
                    self.report_health(&out, &mut reported).await?;
                    continue;
                }
                Ok(()) = self.registrations.changed() => {
                    self.register(&channel, token.as_ref()).await?;
                    continue;
                }
                _ = refresh.tick() => {
                    reported.clear();
                    self.report_health(&out, &mut reported).await?;
                    continue;
                }
                message = inbound.message() => message.map_err(Error::Stream)?,
            };
            let Some(message) = message else {
                return Err(Error::Ended);
            };
            *delivered = true;
            match message.message {
                Some(In::Snapshot(snapshot)) => {
                    Stats::bump(&self.stats.snapshots);
                    resyncing = false;
                    let revision = snapshot.revision;
                    debug!(revision, "received snapshot");
                    let candidate = self.store.prepare_snapshot(snapshot);
                    self.answer(&out, revision, candidate).await?;
                }
                Some(In::Delta(delta)) => {
                    Stats::bump(&self.stats.deltas);
                    let (from, to) = (delta.from_revision, delta.to_revision);
                    debug!(from, to, "received delta");
                    match self.store.prepare_delta(delta) {
                        Err(state::Error::Gap { have, from }) if resyncing => {
                            debug!(have, from, "ignoring delta while resyncing");
                        }
                        Err(error @ state::Error::Gap { have, .. }) => {
                            info!(have, from, to, "resyncing: delta does not apply");
                            Stats::bump(&self.stats.resyncs);
                            out.send(Out::Resync(pb::Resync {
                                have_revision: have,
                                reason: error.to_string(),
                            }))
                            .await?;
                            resyncing = true;
                        }
                        candidate => {
                            resyncing = false;
                            self.answer(&out, to, candidate).await?;
                        }
                    }
                }
                Some(In::Heartbeat(_)) => debug!(%addr, "heartbeat"),
                // A newer control plane's message this agent does not know.
                None => debug!(%addr, "ignoring unknown message"),
            }
        }
    }

    /// Applies a valid candidate (saved, published, acknowledged) or refuses
    /// an invalid one; `revision` is the one the control plane sent.
    async fn answer(
        &mut self,
        out: &Outbound,
        revision: u64,
        candidate: Result<Candidate, state::Error>,
    ) -> Result<(), Error> {
        let candidate = match (candidate, &self.config.driver) {
            (Ok(c), Some(driver)) => match driver.apply(c.shared()).await {
                Ok(()) => Ok(c),
                Err(refused) => Err(refused.into()),
            },
            (candidate, _) => candidate,
        };
        match candidate {
            Ok(candidate) => {
                self.save(candidate.revision(), candidate.encoded_snapshot())
                    .await;
                let persist_error = self.stats.unsaved().map(|(_, e)| e).unwrap_or_default();
                let config = self.store.commit(candidate);
                let resources = self.store.len();
                // Counted before it is published, so that whoever sees the
                // new configuration also sees it counted.
                Stats::bump(&self.stats.acks);
                self.publish.send_replace(config);
                info!(revision, resources, "applied configuration");
                out.send(Out::Ack(pb::Ack {
                    revision,
                    persist_error,
                }))
                .await?;
            }
            Err(error) => {
                warn!(revision, %error, "refused configuration");
                Stats::bump(&self.stats.nacks);
                out.send(Out::Nack(pb::Nack {
                    revision,
                    error: truncate(error.to_string(), MAX_NACK_ERROR),
                }))
                .await?;
            }
        }
        Ok(())
    }

    /// Sends the health results that differ from `reported` (all of them
    /// when it is empty), then records them as reported.
    async fn report_health(&mut self, out: &Outbound, reported: &mut Results) -> Result<(), Error> {
        let current = self.health.borrow_and_update().clone();
        let changed: Vec<pb::EndpointHealth> = current
            .iter()
            .filter(|(name, observed)| reported.get(*name) != Some(observed))
            .map(|(name, o)| pb::EndpointHealth {
                endpoint: name.clone(),
                health: o.health as i32,
                reason: o.reason.clone(),
                observed_at: Some(o.at.into()),
            })
            .collect();
        for chunk in changed.chunks(MAX_REPORT_ENDPOINTS) {
            debug!(endpoints = chunk.len(), "reporting health");
            out.send(Out::Health(pb::HealthReport {
                endpoints: chunk.to_vec(),
            }))
            .await?;
        }
        *reported = current;
        Ok(())
    }

    /// Saves a configuration about to go live (or live already, when
    /// saving it failed before), and records the outcome in the stats;
    /// returns whether the outcome differs from the last one.
    ///
    /// A failure to save does not hold the configuration back: the node
    /// should serve what the control plane sent; only a restart without any
    /// control plane would fall back to the older saved one, which is
    /// consistent in itself. That is why it is not a Nack (the configuration
    /// is applied) but an error logged, counted, carried by the Ack and
    /// shown in the node's status, and the save is tried again every
    /// `persist_retry` until it succeeds. The save is not cancelled by
    /// shutdown either: it is short, and cutting it off would only waste it.
    async fn save(&self, revision: u64, snapshot: Vec<u8>) -> bool {
        let dir = self.config.data_dir.clone();
        let saved = tokio::task::spawn_blocking(move || persist::save(&dir, &snapshot))
            .await
            .map_err(|e| e.to_string())
            .and_then(|saved| saved.map_err(|e| e.to_string()));
        let outcome = match saved {
            Ok(()) => {
                debug!(revision, "saved configuration");
                None
            }
            Err(error) => {
                Stats::bump(&self.stats.persist_failures);
                let dir = self.config.data_dir.display();
                error!(
                    revision, %error, %dir,
                    "saving the configuration failed: it is served, but a restart \
                     without a control plane would serve an older one"
                );
                Some((revision, error))
            }
        };
        let was_unsaved = self.stats.unsaved().is_some();
        if outcome.is_none() && was_unsaved {
            info!(revision, "saved the configuration again");
        }
        // A new revision failing like the last one is no news: compare the
        // errors, not the revisions.
        let changed =
            self.stats.unsaved().map(|(_, e)| e) != outcome.as_ref().map(|(_, e)| e.clone());
        self.stats.set_unsaved(outcome);
        changed
    }
}

/// Whether a control plane refused a request for what it is (as opposed
/// to being unable to answer): asking again unchanged will not help.
fn is_refusal(status: &tonic::Status) -> bool {
    use tonic::Code;
    matches!(
        status.code(),
        Code::InvalidArgument
            | Code::PermissionDenied
            | Code::FailedPrecondition
            | Code::Aborted
            | Code::AlreadyExists
            | Code::NotFound
            | Code::OutOfRange
            | Code::Unimplemented
    )
}

/// The sending half of one stream.
struct Outbound {
    tx: mpsc::Sender<pb::SyncRequest>,
    shutdown: CancellationToken,
}

impl Outbound {
    /// Queues a message; waits while the buffer is full, unless shut down.
    async fn send(&self, message: Out) -> Result<(), Error> {
        tokio::select! {
            // Shutdown drops the stream anyway; what was not sent is moot.
            _ = self.shutdown.cancelled() => Ok(()),
            sent = self.tx.send(request(message)) => sent.map_err(|_| Error::Ended),
        }
    }
}

fn request(message: Out) -> pb::SyncRequest {
    pb::SyncRequest {
        message: Some(message),
    }
}

fn heartbeat_now() -> pb::Heartbeat {
    pb::Heartbeat {
        sent_at: Some(SystemTime::now().into()),
    }
}

/// Cuts `s` to at most `max` bytes, on a character boundary, saying so.
fn truncate(mut s: String, max: usize) -> String {
    const MORE: &str = " …(truncated)";
    if s.len() <= max {
        return s;
    }
    let mut end = max - MORE.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    s.push_str(MORE);
    s
}

#[cfg(test)]
mod tests;
