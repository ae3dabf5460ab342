//! Helpers shared by the end-to-end tests: in-process agents, operator
//! writes, and plain HTTP through a proxy. Each test binary uses a part of
//! them, hence `dead_code` is allowed here.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard_agent::{Agent, NodeConfig};
use switchyard_control_plane::testing::TempDir;
use switchyard_control_plane::testing::fixtures::{self, item, route_to, service};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// An endpoint of `service` on 127.0.0.1:`port`, owned by `node` (empty: none).
pub fn endpoint(name: &str, service: &str, port: u32, node: &str) -> pb::ApplyItem {
    item(pb::resource::Kind::Endpoint(pb::Endpoint {
        node: node.into(),
        ..fixtures::endpoint(name, service, port)
    }))
}

/// An agent running in this process, with its data directory.
pub struct TestAgent {
    pub agent: Agent,
    _dir: Arc<TempDir>,
}

impl TestAgent {
    /// Starts node `node` with label `role=<role>`, quick to retry.
    pub async fn start(
        node: &str,
        role: &str,
        control_planes: Vec<String>,
        dir: Arc<TempDir>,
    ) -> TestAgent {
        Self::start_with(
            switchyard_agent::Config {
                node_id: node.into(),
                labels: BTreeMap::from([("role".to_string(), role.to_string())]),
                control_planes,
                data_dir: dir.path().to_path_buf(),
                backoff_base: Duration::from_millis(20),
                backoff_max: Duration::from_millis(200),
                ..Default::default()
            },
            dir,
        )
        .await
    }

    /// Starts an agent with `config`, keeping `dir` alive as long as it runs.
    pub async fn start_with(config: switchyard_agent::Config, dir: Arc<TempDir>) -> TestAgent {
        let agent = Agent::start(config, CancellationToken::new())
            .await
            .expect("start agent");
        TestAgent { agent, _dir: dir }
    }

    /// The configuration the agent serves now.
    pub fn config(&self) -> Arc<NodeConfig> {
        self.agent.config().borrow().clone()
    }

    /// One of the agent's counters, by name.
    pub fn counter(&self, which: &str) -> u64 {
        let s = self.agent.stats();
        match which {
            "snapshots" => s.snapshots.load(Ordering::Relaxed),
            "deltas" => s.deltas.load(Ordering::Relaxed),
            "nacks" => s.nacks.load(Ordering::Relaxed),
            "connects" => s.connects.load(Ordering::Relaxed),
            _ => unreachable!(),
        }
    }

    /// Waits until the agent's configuration satisfies `done`.
    pub async fn until(&self, what: &str, done: impl Fn(&NodeConfig) -> bool) -> Duration {
        let started = Instant::now();
        let mut rx: watch::Receiver<Arc<NodeConfig>> = self.agent.config();
        tokio::time::timeout(Duration::from_secs(15), rx.wait_for(|c| done(c)))
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "agent never reached: {what}; it holds revision {}",
                    self.config().revision
                )
            })
            .expect("agent stopped");
        started.elapsed()
    }
}

/// Applies `items` through the operator API; returns the new revision.
pub async fn apply(url: &str, items: Vec<pb::ApplyItem>) -> u64 {
    let mut client = pb::operator_service_client::OperatorServiceClient::connect(url.to_string())
        .await
        .unwrap();
    client
        .apply(pb::ApplyRequest {
            items,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

/// A free loopback port (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Service `web` with one endpoint on `backend_port`, behind a catch-all
/// route and a listener on 127.0.0.1:`listen` for every node.
pub fn proxied_web(backend_port: u16, listen: u16) -> Vec<pb::ApplyItem> {
    let front = fixtures::listener("front", "127.0.0.1", u32::from(listen), "web");
    vec![
        item(service("web")),
        endpoint("web-1", "web", u32::from(backend_port), ""),
        item(route_to("web", "web")),
        item(pb::resource::Kind::Listener(front)),
    ]
}

/// A keep-alive HTTP/1.1 backend that answers every request with `body`.
pub async fn one_line_backend(body: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            conns.spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, task)
}

/// One GET of `path` through the proxy on `port` (on a new connection):
/// status and body, or `None` if the connection failed.
pub async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Some((status, out.rsplit("\r\n\r\n").next()?.to_owned()))
}

/// One GET of `/` through the proxy on `port`; the body, or `None` if the
/// connection failed.
pub async fn fetch(port: u16) -> Option<String> {
    get(port, "/").await.map(|(_, body)| body)
}

/// Endpoint `name` as the control plane at `server` stores it, if it exists.
pub async fn stored_endpoint(
    server: &switchyard_control_plane::testing::TestServer,
    name: &str,
) -> Option<pb::Endpoint> {
    let got = server
        .client()
        .await
        .get(pb::GetRequest {
            r#ref: Some(pb::ResourceRef {
                kind: pb::Kind::Endpoint as i32,
                name: name.into(),
            }),
        })
        .await;
    match got {
        Ok(r) => match r.into_inner().resource.and_then(|r| r.kind) {
            Some(pb::resource::Kind::Endpoint(e)) => Some(e),
            other => panic!("not an endpoint: {other:?}"),
        },
        Err(s) if s.code() == tonic::Code::NotFound => None,
        Err(s) => panic!("{s:?}"),
    }
}

/// Waits (at most 15 s) until the proxy on `port` answers `want`.
pub async fn until_body(port: u16, want: &str) -> Duration {
    let started = Instant::now();
    while fetch(port).await.as_deref() != Some(want) {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "the proxy never answered {want}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}
