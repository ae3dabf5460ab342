//! End to end over TLS: a real control plane serving mutual TLS, real
//! agents with client certificates (and a token file), and a certificate
//! rotation under live agent streams.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use switchyard::pb;
use switchyard::tls::testing::{Ca, Pair, served_certificate};
use switchyard::tls::{ClientFiles, ServerFiles};
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};

mod common;
use common::*;

/// A control plane serving mutual TLS with certificates from `ca`.
struct Secured {
    server: TestServer,
    ca: Ca,
    files: ServerFiles,
    dir: TempDir,
}

impl Secured {
    async fn start(db: &TestDb) -> Secured {
        let dir = TempDir::new();
        let ca = Ca::new("test CA");
        let (cert, key) = ca.server("first").write(dir.path(), "server");
        let files = ServerFiles {
            cert,
            key,
            client_ca: Some(ca.write(dir.path(), "ca")),
        };
        let config = switchyard_control_plane::server::Config {
            tls: Some(files.clone()),
            ..TestServer::config()
        };
        let server = TestServer::start_with(db.url(), config).await;
        Secured {
            server,
            ca,
            files,
            dir,
        }
    }

    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.server.addr.port())
    }

    /// Client files trusting `ca` (this one's when `None`) with `pair`
    /// written as `name`.
    fn client(&self, name: &str, ca: Option<&Ca>, pair: &Pair) -> ClientFiles {
        let (cert, key) = pair.write(self.dir.path(), name);
        let ca_cert = match ca {
            Some(ca) => ca.write(self.dir.path(), &format!("{name}-ca")),
            None => self.files.client_ca.clone().unwrap(),
        };
        ClientFiles {
            ca_cert: Some(ca_cert),
            cert: Some(cert),
            key: Some(key),
        }
    }

    /// Applies `items` over mutual TLS as an operator; returns the revision.
    async fn apply(&self, items: Vec<pb::ApplyItem>) -> u64 {
        let files = self.client("operator", None, &self.ca.client(None));
        let channel = files
            .endpoint(&self.https())
            .unwrap()
            .connect()
            .await
            .unwrap();
        pb::operator_service_client::OperatorServiceClient::new(channel)
            .apply(pb::ApplyRequest {
                items,
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner()
            .revision
    }
}

/// An agent for `node` syncing with `control_plane` through `tls`.
async fn agent(
    node: &str,
    control_plane: String,
    tls: ClientFiles,
    token_file: Option<&Path>,
) -> TestAgent {
    let dir = Arc::new(TempDir::new());
    TestAgent::start_with(
        switchyard_agent::Config {
            node_id: node.into(),
            labels: BTreeMap::new(),
            control_planes: vec![control_plane],
            tls,
            token_file: token_file.map(Path::to_path_buf),
            data_dir: dir.path().to_path_buf(),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..Default::default()
        },
        dir,
    )
    .await
}

/// Waits until `agent` has failed to sync `times` times.
async fn failed(agent: &TestAgent, times: u64) {
    let stats = agent.agent.stats();
    let started = tokio::time::Instant::now();
    while stats.sync_failures.load(Ordering::Relaxed) < times {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the agent never failed {times} times"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The agent's stream count and the control plane it is connected to.
fn connection(agent: &TestAgent) -> (u64, Option<String>) {
    (
        agent.counter("connects"),
        agent.agent.stats().connected_to(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_agents_with_a_certificate_from_the_ca_sync() {
    let db = TestDb::sqlite();
    let cp = Secured::start(&db).await;
    let (port, _backend) = one_line_backend("hello").await;
    let first = cp.apply(proxied_web(port, free_port())).await;
    let token = cp.dir.path().join("token");
    std::fs::write(&token, "agent-token\n").unwrap();

    // Refused, each for its own reason; started first, so that they have
    // tried again and again by the time the good one has synced.
    let other = Ca::new("another CA");
    let wrong_ca = cp.client("wrong-ca", None, &other.client(Some("wrong-ca")));
    let expired = cp.client("expired", None, &cp.ca.expired_client(Some("expired")));
    // The agent does not trust the control plane's certificate.
    let distrust = cp.client("distrust", Some(&other), &cp.ca.client(Some("distrust")));
    let plain = format!("http://127.0.0.1:{}", cp.server.addr.port());
    let refused = vec![
        agent("wrong-ca", cp.https(), wrong_ca, Some(&token)).await,
        agent("expired", cp.https(), expired, Some(&token)).await,
        agent("distrust", cp.https(), distrust, Some(&token)).await,
        agent("plaintext", plain, ClientFiles::default(), Some(&token)).await,
    ];

    let good = cp.client("node-1", None, &cp.ca.client(Some("node-1")));
    let good = agent("node-1", cp.https(), good, Some(&token)).await;
    good.until("synced over mutual TLS", |c| c.revision >= first)
        .await;
    assert!(good.config().listeners.contains_key("front"));
    assert_eq!(connection(&good), (1, Some(cp.https())));

    // A later write reaches it too; none of the others ever connects.
    let second = cp
        .apply(vec![endpoint("web-2", "web", u32::from(port), "")])
        .await;
    good.until("the next write", |c| c.endpoints.contains_key("web-2"))
        .await;
    assert!(second > first);
    for agent in &refused {
        // Tried, and refused, again and again.
        failed(agent, 3).await;
        assert_eq!(connection(agent), (0, None));
        assert_eq!(agent.config().revision, 0, "it never received anything");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_server_certificate_breaks_no_agent_stream() {
    let db = TestDb::sqlite();
    let cp = Secured::start(&db).await;
    let (port, _backend) = one_line_backend("hello").await;
    let first = cp.apply(proxied_web(port, free_port())).await;
    let mut agents = Vec::new();
    for node in ["node-1", "node-2", "node-3"] {
        let tls = cp.client(node, None, &cp.ca.client(Some(node)));
        let agent = agent(node, cp.https(), tls, None).await;
        agent.until("synced", |c| c.revision >= first).await;
        agents.push(agent);
    }
    for agent in &agents {
        assert_eq!(agent.counter("connects"), 1);
    }

    let probe = cp.ca.client(Some("probe"));
    let before = served_certificate(cp.server.addr, &cp.ca, Some(&probe))
        .await
        .unwrap();
    let second = cp.ca.server("second");
    assert_ne!(before, second.cert_der);
    second.replace(&cp.files.cert, &cp.files.key);
    let rotated = tokio::time::Instant::now();
    while served_certificate(cp.server.addr, &cp.ca, Some(&probe))
        .await
        .unwrap()
        != second.cert_der
    {
        assert!(
            rotated.elapsed() < Duration::from_secs(10),
            "the new certificate was not served within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The streams opened before the rotation carry the next write.
    cp.apply(vec![endpoint("web-2", "web", u32::from(port), "")])
        .await;
    for agent in &agents {
        agent
            .until("the write after the rotation", |c| {
                c.endpoints.contains_key("web-2")
            })
            .await;
        assert_eq!(
            connection(agent),
            (1, Some(cp.https())),
            "the stream was not replaced"
        );
    }
}
