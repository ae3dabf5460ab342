//! Readiness: waiting until the node serves what was applied (the agent
//! has it, its checks found every backend healthy, each listener answers),
//! and what the demo then tells its user.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use switchyard::resource::Health;
use switchyard_agent::NodeConfig;
use switchyard_agent::health::Results;
use tokio::sync::watch;
use tokio::time::Instant;

/// How often a listener that does not answer yet is tried again.
const POLL: Duration = Duration::from_millis(25);

/// The line that ends the demo's instructions, once everything serves;
/// scripts and tests wait for it. Its `key=value` fields follow.
pub const MARKER: &str = "ready:";

/// One backend, as the instructions show it.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Its name, also its endpoint's.
    pub name: String,
    /// Its version label.
    pub version: String,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// What the Apply of the demo's manifests did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Applied {
    /// Resources in the manifests.
    pub resources: usize,
    /// Created by this Apply.
    pub created: usize,
    /// Changed by this Apply (a kept data directory, new ports).
    pub configured: usize,
    /// Already as declared.
    pub unchanged: usize,
    /// The store's revision after it.
    pub revision: u64,
}

/// A demo that serves: where everything is.
#[derive(Debug, Clone)]
pub struct Ready {
    /// The control plane's gRPC address, for `yardctl --server`.
    pub control_plane: SocketAddr,
    /// The round-robin listener.
    pub round_robin: SocketAddr,
    /// The canary listener.
    pub canary: SocketAddr,
    /// The agent's node id.
    pub node: String,
    /// The backends.
    pub backends: Vec<Backend>,
    /// The data directory: the store and the agent's saved configuration.
    pub data_dir: PathBuf,
    /// Whether the data directory is removed at exit.
    pub temporary: bool,
    /// What applying the manifests did.
    pub applied: Applied,
    /// How often the agent checks each backend.
    pub check_interval: Option<Duration>,
}

impl Ready {
    /// The round-robin listener's URL.
    pub fn round_robin_url(&self) -> String {
        format!("http://{}/", self.round_robin)
    }

    /// The canary listener's URL.
    pub fn canary_url(&self) -> String {
        format!("http://{}/", self.canary)
    }

    /// The control plane's URL.
    pub fn control_plane_url(&self) -> String {
        format!("http://{}", self.control_plane)
    }
}

/// The instructions: what runs where, what to try, and the marker line.
impl fmt::Display for Ready {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let cp = self.control_plane_url();
        let rr = self.round_robin_url();
        let canary = self.canary_url();
        let applied = &self.applied;
        writeln!(
            f,
            "Switchyard demo: a control plane, an agent (node `{}`) with the built-in proxy, \
             and three backends, on loopback.",
            self.node
        )?;
        writeln!(f)?;
        let kept = if self.temporary {
            "removed at exit"
        } else {
            "kept"
        };
        writeln!(
            f,
            "  control plane  {cp}  (SQLite store in {}, {kept})",
            self.data_dir.display()
        )?;
        let backends: Vec<String> = self
            .backends
            .iter()
            .map(|b| format!("{} {} ({})", b.name, b.addr, b.version))
            .collect();
        writeln!(f, "  backends       {}", backends.join(", "))?;
        writeln!(
            f,
            "  applied        demo/manifests/*.yaml: {} resources ({} created, {} configured, \
             {} unchanged) at revision {}",
            applied.resources,
            applied.created,
            applied.configured,
            applied.unchanged,
            applied.revision
        )?;
        let every = self
            .check_interval
            .map(|d| format!(" every {d:?}"))
            .unwrap_or_default();
        writeln!(
            f,
            "  health         all {} endpoints healthy (GET /healthz{every}, checked by the agent)",
            self.backends.len()
        )?;
        writeln!(f)?;
        writeln!(f, "Round robin over the two v1 backends:")?;
        writeln!(f, "  curl -s {rr}")?;
        writeln!(
            f,
            "  for i in $(seq 20); do curl -s {rr}; done | sort | uniq -c"
        )?;
        writeln!(f)?;
        writeln!(
            f,
            "A 90/10 canary between v1 and v2; the header x-canary: 1 always reaches v2:"
        )?;
        writeln!(
            f,
            "  for i in $(seq 100); do curl -s {canary}; done | sort | uniq -c"
        )?;
        writeln!(f, "  curl -s -H 'x-canary: 1' {canary}")?;
        writeln!(f)?;
        writeln!(f, "The control plane, through yardctl:")?;
        for command in ["get endpoints", "nodes", "get routes canary -o yaml"] {
            writeln!(f, "  cargo run -q --bin yardctl -- --server {cp} {command}")?;
        }
        writeln!(f)?;
        writeln!(f, "Ctrl-C stops everything.")?;
        write!(
            f,
            "{MARKER} control-plane={cp} round-robin={rr} canary={canary} data-dir={}",
            self.data_dir.display()
        )
    }
}

/// Whether `config` is current at `revision` and every endpoint in `names`
/// is healthy in it: the agent checked it, reported it, and the control
/// plane sent the report back.
pub fn healthy(config: &NodeConfig, revision: u64, names: &[String]) -> bool {
    config.revision >= revision
        && names.iter().all(|name| {
            config
                .endpoints
                .get(name)
                .is_some_and(|e| e.health == Health::Healthy)
        })
}

/// What [`healthy`] still waits for, in words.
pub fn describe_unhealthy(
    config: &NodeConfig,
    results: &Results,
    revision: u64,
    names: &[String],
) -> String {
    if config.revision < revision {
        return format!(
            "the agent to apply revision {revision} (it is at {})",
            config.revision
        );
    }
    let pending: Vec<String> = names
        .iter()
        .filter_map(|name| {
            let health = config.endpoints.get(name).map(|e| e.health);
            if health == Some(Health::Healthy) {
                return None;
            }
            let checked = match results.get(name) {
                Some(observed) => format!("{:?}: {}", observed.health, observed.reason),
                None => "not checked yet".to_owned(),
            };
            Some(format!("{name} ({checked})"))
        })
        .collect();
    format!("endpoints to be reported healthy: {}", pending.join(", "))
}

/// Waits until `config` is [`healthy`].
pub async fn until_healthy(
    mut config: watch::Receiver<Arc<NodeConfig>>,
    revision: u64,
    names: &[String],
) {
    // An error means the agent stopped; the caller notices its task ending.
    if config
        .wait_for(|c| healthy(c, revision, names))
        .await
        .is_err()
    {
        std::future::pending::<()>().await;
    }
}

/// A plain HTTP/1.1 client.
pub type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// A client for [`get`].
pub fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// GETs `url`; the status and body, or what went wrong.
pub async fn get(client: &HttpClient, url: &str) -> Result<(u16, String), String> {
    let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
    let response = client.get(uri).await.map_err(|e| causes(&e))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Polls `url` until a backend answers through it, or `deadline`; the last
/// failure when it passes.
pub async fn until_serving(
    client: &HttpClient,
    url: &str,
    deadline: Instant,
) -> Result<(), String> {
    loop {
        let last = match tokio::time::timeout_at(deadline, get(client, url)).await {
            Ok(Ok((200, body))) if body.starts_with("hello from") => return Ok(()),
            Ok(Ok((status, body))) => format!("HTTP {status}: {}", body.trim()),
            Ok(Err(error)) => error,
            Err(_) => "no answer".to_owned(),
        };
        if Instant::now() + POLL >= deadline {
            return Err(last);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// An error and its causes, `outer: inner`: hyper's own message is often
/// only "client error (Connect)".
fn causes(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}
