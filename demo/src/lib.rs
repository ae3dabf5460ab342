//! Switchyard's local demo, in one process on loopback: the control plane
//! on an embedded SQLite store, three demo backends, and one agent with the
//! built-in proxy, configured by the manifests in `demo/manifests/`.
//!
//! [`Demo::start`] brings everything up, applies the manifests and waits
//! until the node serves them; [`Demo::wait`] runs until the shutdown token
//! is cancelled. Every task belongs to the demo's [`JoinSet`] and stops on
//! the one token, so nothing outlives it.

pub mod backend;
pub mod manifests;
pub mod ports;
pub mod ready;

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard::pb;
use switchyard::pb::operator_service_client::OperatorServiceClient;
use switchyard_agent::{Agent, sync};
use switchyard_control_plane::{server, store};
use switchyard_proxy::Builtin;
use tempfile::TempDir;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::backend::Backend;
use crate::ready::{Applied, Ready};

pub use ready::MARKER;

/// The demo agent's node id; the manifests' endpoints name it, so this
/// agent health-checks them.
pub const NODE: &str = "demo";

/// The backends: name (also the endpoint's name) and version label.
pub const BACKENDS: [(&str, &str); 3] =
    [("web-v1-a", "v1"), ("web-v1-b", "v1"), ("web-v2-a", "v2")];

/// How long stopping may take when the start fails half-way.
const ABANDON: Duration = Duration::from_secs(10);

/// What the demo needs to start.
#[derive(Debug, Clone)]
pub struct Config {
    /// The control plane's gRPC address.
    pub listen: SocketAddr,
    /// The first of the two listener ports (round robin, then canary), on
    /// 127.0.0.1; 0 picks any two free ports.
    pub port_base: u16,
    /// Where the store and the agent's saved configuration are kept; a
    /// temporary directory, removed at exit, when unset.
    pub data_dir: Option<PathBuf>,
    /// How long the start may take, until the node serves.
    pub startup_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 7700)),
            port_base: 8080,
            data_dir: None,
            startup_timeout: Duration::from_secs(30),
        }
    }
}

/// Why the demo did not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A port is taken or cannot be bound.
    #[error(transparent)]
    Port(#[from] ports::Error),
    /// The data directory could not be made.
    #[error("data directory {path}: {source}")]
    DataDir {
        /// The directory (the system's temporary directory, when none was given).
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A backend could not bind its port.
    #[error("backend {name}: {source}")]
    Backend {
        /// The backend.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The store could not be opened.
    #[error("opening the store: {0}")]
    Store(#[from] store::Error),
    /// The control plane failed.
    #[error("control plane: {0}")]
    Server(#[from] server::Error),
    /// The agent failed.
    #[error("agent: {0}")]
    Agent(#[from] sync::Error),
    /// The manifests could not be read.
    #[error("manifests: {0}")]
    Manifests(#[from] manifests::Error),
    /// The control plane could not be reached to apply the manifests.
    #[error("connecting to the control plane at {url}: {source}")]
    Connect {
        /// Its URL.
        url: String,
        /// Why.
        source: tonic::transport::Error,
    },
    /// The control plane refused the manifests.
    #[error("applying the manifests: {}: {}", .0.code(), .0.message())]
    Apply(tonic::Status),
    /// The node did not serve in time.
    #[error("not ready after {timeout:?}: waiting for {waiting_for}")]
    NotReady {
        /// What was still missing.
        waiting_for: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// A part of the demo stopped on its own.
    #[error("{0} stopped unexpectedly")]
    Stopped(&'static str),
    /// A part of the demo panicked.
    #[error("a demo task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    /// The shutdown token was cancelled while starting.
    #[error("interrupted while starting")]
    Cancelled,
}

impl Error {
    /// Whether this is the start interrupted on purpose (Ctrl-C), rather
    /// than a failure.
    pub fn is_cancelled(&self) -> bool {
        matches!(self, Error::Cancelled)
    }
}

/// The demo's tasks, each with the name it is reported by.
type Tasks = JoinSet<(&'static str, Result<(), Error>)>;

/// A running demo.
#[derive(Debug)]
pub struct Demo {
    ready: Ready,
    tasks: Tasks,
    /// A child of the caller's token: cancelling the caller's stops the
    /// demo, and a part that fails stops the others without touching it.
    shutdown: CancellationToken,
    /// Dropped, and so removed, after every task has ended.
    _temp: Option<TempDir>,
}

impl Demo {
    /// Starts the control plane, the backends and the agent, applies the
    /// manifests, and returns once the node serves them. Until `shutdown`
    /// is cancelled everything keeps running; see [`Demo::wait`].
    ///
    /// On failure (or `shutdown` cancelled while starting: [`Error::Cancelled`])
    /// whatever started is stopped before this returns.
    pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Demo, Error> {
        let shutdown = shutdown.child_token();
        let (dir, temp) = match &config.data_dir {
            Some(dir) => {
                std::fs::create_dir_all(dir).map_err(|source| Error::DataDir {
                    path: dir.clone(),
                    source,
                })?;
                (dir.clone(), None)
            }
            None => {
                let temp = tempfile::Builder::new()
                    .prefix("switchyard-demo-")
                    .tempdir()
                    .map_err(|source| Error::DataDir {
                        path: std::env::temp_dir(),
                        source,
                    })?;
                (temp.path().to_owned(), Some(temp))
            }
        };
        let mut tasks = Tasks::new();
        match boot(&config, &dir, temp.is_some(), &shutdown, &mut tasks).await {
            Ok(ready) => Ok(Demo {
                ready,
                tasks,
                shutdown,
                _temp: temp,
            }),
            Err(error) => {
                // Cancelled from outside while starting: whatever failed
                // after that failed because of it.
                let error = if shutdown.is_cancelled() {
                    Error::Cancelled
                } else {
                    error
                };
                shutdown.cancel();
                let _ = tokio::time::timeout(ABANDON, join_all(&mut tasks)).await;
                Err(error)
            }
        }
    }

    /// Where everything is, and what to try.
    pub fn ready(&self) -> &Ready {
        &self.ready
    }

    /// Runs until the shutdown token is cancelled and every part has
    /// stopped, then removes a temporary data directory. When a part fails
    /// or stops on its own, the others are stopped too and its error is
    /// returned.
    pub async fn wait(mut self) -> Result<(), Error> {
        let mut first = None;
        while let Some(joined) = self.tasks.join_next().await {
            let error = match joined {
                Ok((_, Ok(()))) if self.shutdown.is_cancelled() => continue,
                Ok((task, Ok(()))) => Error::Stopped(task),
                Ok((_, Err(error))) => error,
                Err(error) => Error::Task(error),
            };
            // The first failure is the cause; later ones are usually its
            // consequences.
            first.get_or_insert(error);
            self.shutdown.cancel();
        }
        first.map_or(Ok(()), Err)
    }
}

/// Waits for every task, ignoring how they ended.
async fn join_all(tasks: &mut Tasks) {
    while tasks.join_next().await.is_some() {}
}

/// Everything [`Demo::start`] does once the data directory exists.
async fn boot(
    config: &Config,
    dir: &Path,
    temporary: bool,
    shutdown: &CancellationToken,
    tasks: &mut Tasks,
) -> Result<Ready, Error> {
    let timeout = config.startup_timeout;
    let deadline = Instant::now() + timeout;
    // Every port first, so a busy one fails the start before anything runs.
    let cp_listener = ports::control_plane(config.listen).await?;
    let bound = cp_listener
        .local_addr()
        .map_err(|source| ports::Error::Bind {
            addr: config.listen,
            what: "the control plane",
            source,
        })?;
    let cp_addr = ports::reachable(bound);
    let [rr_port, canary_port] = ports::listeners(config.port_base).await?;
    let mut backends = Vec::new();
    for (name, version) in BACKENDS {
        let backend = Backend::bind(name, version)
            .await
            .map_err(|source| Error::Backend { name, source })?;
        backends.push(backend);
    }

    let database_url = format!("sqlite://{}", dir.join("switchyard.db").display());
    let store = store::Any::connect(&database_url).await?;
    let cp_config = server::Config {
        listen: cp_addr,
        database_url,
        replica: "demo".into(),
        ..server::Config::default()
    };
    let token = shutdown.clone();
    tasks.spawn(async move {
        let served = server::serve(cp_listener, store.clone(), &cp_config, token).await;
        store.close().await;
        ("the control plane", served.map_err(Error::from))
    });

    let mut vars = manifests::Vars::new();
    let mut shown = Vec::new();
    for (backend, (name, _)) in backends.into_iter().zip(BACKENDS) {
        vars.insert(
            manifests::port_var(&backend.name),
            backend.addr().port().to_string(),
        );
        shown.push(ready::Backend {
            name: backend.name.clone(),
            version: backend.version.clone(),
            addr: backend.addr(),
        });
        let token = shutdown.clone();
        tasks.spawn(async move {
            backend.serve(token).await;
            (name, Ok(()))
        });
    }

    let cp_url = format!("http://{cp_addr}");
    let agent = Agent::start(
        switchyard_agent::Config {
            node_id: NODE.into(),
            control_planes: vec![cp_url.clone()],
            data_dir: dir.join("agent"),
            ..switchyard_agent::Config::default()
        },
        shutdown.clone(),
    )
    .await?;
    let node_config = agent.config();
    let health = agent.health();
    let proxy = Builtin::new().run(agent.config(), shutdown.clone());
    tasks.spawn(async move {
        proxy.await;
        ("the proxy", Ok(()))
    });
    tasks.spawn(async move { ("the agent", agent.wait().await.map_err(Error::from)) });

    vars.insert("NODE".into(), NODE.into());
    vars.insert("WEB_PORT".into(), rr_port.to_string());
    vars.insert("CANARY_PORT".into(), canary_port.to_string());
    let resources = manifests::load(&vars)?;
    let applied = step(
        tasks,
        shutdown,
        deadline,
        timeout,
        apply(&cp_url, resources),
        || format!("the control plane at {cp_url} to apply the manifests"),
    )
    .await??;
    info!(revision = applied.revision, "applied the demo's manifests");

    let names: Vec<String> = BACKENDS.iter().map(|(n, _)| (*n).to_owned()).collect();
    let revision = applied.revision;
    step(
        tasks,
        shutdown,
        deadline,
        timeout,
        ready::until_healthy(node_config.clone(), revision, &names),
        || ready::describe_unhealthy(&node_config.borrow(), &health.borrow(), revision, &names),
    )
    .await?;

    let client = ready::client();
    let rr = SocketAddr::from(([127, 0, 0, 1], rr_port));
    let canary = SocketAddr::from(([127, 0, 0, 1], canary_port));
    for addr in [rr, canary] {
        let url = format!("http://{addr}/");
        let serving = ready::until_serving(&client, &url, deadline);
        let describe = || format!("the listener at {url} to answer");
        if let Err(last) = step(tasks, shutdown, deadline, timeout, serving, describe).await? {
            return Err(Error::NotReady {
                waiting_for: format!("the listener at {url} to answer (last: {last})"),
                timeout,
            });
        }
    }

    let check_interval = node_config
        .borrow()
        .services
        .get("web")
        .and_then(|s| s.health_check.as_ref())
        .map(|c| c.interval);
    Ok(Ready {
        control_plane: cp_addr,
        round_robin: rr,
        canary,
        node: NODE.into(),
        backends: shown,
        data_dir: dir.to_owned(),
        temporary,
        applied,
        check_interval,
    })
}

/// Runs one step of the start until it is done, `deadline` passes (then
/// `waiting_for` says what was missing), `shutdown` is cancelled, or a part
/// of the demo stops, whichever comes first.
async fn step<T>(
    tasks: &mut Tasks,
    shutdown: &CancellationToken,
    deadline: Instant,
    timeout: Duration,
    step: impl Future<Output = T>,
    waiting_for: impl FnOnce() -> String,
) -> Result<T, Error> {
    tokio::select! {
        done = tokio::time::timeout_at(deadline, step) => done.map_err(|_| Error::NotReady {
            waiting_for: waiting_for(),
            timeout,
        }),
        _ = shutdown.cancelled() => Err(Error::Cancelled),
        Some(ended) = tasks.join_next() => Err(match ended {
            Ok((_, Err(error))) => error,
            Ok((task, Ok(()))) => Error::Stopped(task),
            Err(error) => Error::Task(error),
        }),
    }
}

/// Applies `resources` in one batch.
async fn apply(url: &str, resources: Vec<pb::Resource>) -> Result<Applied, Error> {
    let mut client = OperatorServiceClient::connect(url.to_owned())
        .await
        .map_err(|source| Error::Connect {
            url: url.to_owned(),
            source,
        })?;
    let resources_len = resources.len();
    let items = resources
        .into_iter()
        .map(|resource| pb::ApplyItem {
            resource: Some(resource),
            expected_revision: None,
        })
        .collect();
    let response = client
        .apply(pb::ApplyRequest {
            items,
            dry_run: false,
        })
        .await
        .map_err(Error::Apply)?
        .into_inner();
    let mut counts: BTreeMap<i32, usize> = BTreeMap::new();
    for result in &response.results {
        *counts.entry(result.action).or_default() += 1;
    }
    let count = |action: pb::ApplyAction| counts.get(&(action as i32)).copied().unwrap_or(0);
    Ok(Applied {
        resources: resources_len,
        created: count(pb::ApplyAction::Created),
        configured: count(pb::ApplyAction::Configured),
        unchanged: count(pb::ApplyAction::Unchanged),
        revision: response.revision,
    })
}
