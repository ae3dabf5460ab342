//! The sync client against scripted, in-process `AgentService` servers:
//! apply and acknowledge, resync on a gap, refuse a bad configuration,
//! fail over, resume with an inventory, and serve the saved configuration
//! after a restart with no control plane up.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use switchyard::pb;
use switchyard::pb::agent_service_server::{AgentService, AgentServiceServer};
use switchyard::pb::sync_request::Message as Req;
use switchyard::pb::sync_response::Message as Resp;
use switchyard::resource::Ref;
use switchyard_agent::registration::{OnShutdown, Registration};
use switchyard_agent::testing::{delta, listener, web};
use switchyard_agent::{Agent, Config, NodeConfig};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

/// Upper bound on any single wait in these tests.
const WAIT: Duration = Duration::from_secs(10);

/// One stream the agent opened, for the test to script.
struct Session {
    inbound: Streaming<pb::SyncRequest>,
    outbound: mpsc::Sender<Result<pb::SyncResponse, Status>>,
}

impl Session {
    /// The next message from the agent that is not a heartbeat.
    async fn next(&mut self) -> Req {
        loop {
            let message = tokio::time::timeout(WAIT, self.inbound.message())
                .await
                .expect("timed out waiting for the agent")
                .expect("stream error")
                .expect("the agent ended the stream");
            match message.message.expect("empty message") {
                Req::Heartbeat(_) => continue,
                other => return other,
            }
        }
    }

    async fn hello(&mut self) -> pb::Hello {
        match self.next().await {
            Req::Hello(h) => h,
            other => panic!("expected Hello, got {other:?}"),
        }
    }

    async fn send(&self, message: Resp) {
        self.outbound
            .send(Ok(pb::SyncResponse {
                message: Some(message),
            }))
            .await
            .expect("the stream is gone");
    }
}

/// The fake control plane: hands every stream to the test, and records
/// each call's `authorization` header.
struct Fake {
    sessions: mpsc::Sender<Session>,
    calls: Calls,
}

/// Each call's method and `authorization` header (`-` for none).
type Calls = Arc<Mutex<Vec<(&'static str, String)>>>;

fn record<T>(calls: &Calls, method: &'static str, request: &Request<T>) {
    let header = request.metadata().get("authorization");
    let value = header.map_or("-".into(), |v| v.to_str().unwrap().to_owned());
    calls.lock().unwrap().push((method, value));
}

#[tonic::async_trait]
impl AgentService for Fake {
    type SyncStream = ReceiverStream<Result<pb::SyncResponse, Status>>;

    async fn sync(
        &self,
        request: Request<Streaming<pb::SyncRequest>>,
    ) -> Result<Response<Self::SyncStream>, Status> {
        record(&self.calls, "sync", &request);
        let (outbound, rx) = mpsc::channel(16);
        let session = Session {
            inbound: request.into_inner(),
            outbound,
        };
        self.sessions
            .send(session)
            .await
            .map_err(|_| Status::unavailable("test over"))?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::RegisterResponse>, Status> {
        record(&self.calls, "register", &request);
        Ok(Response::new(pb::RegisterResponse::default()))
    }

    async fn deregister(
        &self,
        request: Request<pb::DeregisterRequest>,
    ) -> Result<Response<pb::DeregisterResponse>, Status> {
        record(&self.calls, "deregister", &request);
        Ok(Response::new(pb::DeregisterResponse::default()))
    }
}

/// A fake control plane serving on a loopback port.
struct Server {
    addr: SocketAddr,
    sessions: mpsc::Receiver<Session>,
    calls: Calls,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, sessions) = mpsc::channel(4);
        let shutdown = CancellationToken::new();
        let calls = Calls::default();
        let fake = Fake {
            sessions: tx,
            calls: calls.clone(),
        };
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(AgentServiceServer::new(fake))
                .serve_with_incoming_shutdown(
                    TcpListenerStream::new(listener),
                    shutdown.clone().cancelled_owned(),
                ),
        );
        Server {
            addr,
            sessions,
            calls,
            shutdown,
            task,
        }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next stream an agent opens.
    async fn accept(&mut self) -> Session {
        tokio::time::timeout(WAIT, self.sessions.recv())
            .await
            .expect("timed out waiting for the agent to connect")
            .expect("server gone")
    }

    /// Stops accepting, ends the streams still open (by dropping them) and
    /// waits until the server is gone.
    async fn stop(self, open: Vec<Session>) {
        self.shutdown.cancel();
        drop(open);
        drop(self.sessions);
        tokio::time::timeout(WAIT, self.task)
            .await
            .expect("server did not stop")
            .unwrap()
            .unwrap();
    }
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "switchyard-agent-sync-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn config(data_dir: &Path, control_planes: Vec<String>) -> Config {
    Config {
        node_id: "node-1".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        control_planes,
        tls: Default::default(),
        token_file: None,
        data_dir: data_dir.to_owned(),
        backoff_base: Duration::from_millis(10),
        backoff_max: Duration::from_millis(100),
        heartbeat_interval: Duration::from_secs(3600),
        connect_timeout: Duration::from_secs(1),
        health_refresh: Duration::from_secs(3600),
        registration: None,
        persist_retry: Duration::from_secs(5),
        driver: None,
    }
}

/// An address nothing listens on.
async fn closed_port() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    format!("http://{}", listener.local_addr().unwrap())
}

/// Waits until the published configuration is at `revision`.
async fn published(
    config: &mut watch::Receiver<Arc<NodeConfig>>,
    revision: u64,
) -> Arc<NodeConfig> {
    tokio::time::timeout(WAIT, config.wait_for(|c| c.revision == revision))
        .await
        .unwrap_or_else(|_| panic!("revision {revision} was not published"))
        .expect("agent gone")
        .clone()
}

fn listener_names(config: &NodeConfig) -> Vec<&str> {
    config.listeners.keys().map(String::as_str).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_resync_refuse_fail_over_and_restart() {
    let dir = TempDir::new();
    let mut first = Server::start().await;
    let mut second = Server::start().await;
    let shutdown = CancellationToken::new();
    let agent = Agent::start(
        config(&dir.0, vec![first.url(), second.url()]),
        shutdown.clone(),
    )
    .await
    .unwrap();
    let mut published_config = agent.config();
    assert_eq!(published_config.borrow().revision, 0);
    let stats = agent.stats();

    // A new agent says hello with nothing.
    let mut session = first.accept().await;
    let hello = session.hello().await;
    assert_eq!(hello.node_id, "node-1");
    assert_eq!(hello.labels.get("zone").map(String::as_str), Some("a"));
    assert_eq!(hello.agent_version, env!("CARGO_PKG_VERSION"));
    assert_eq!(hello.last_applied_revision, 0);
    assert!(hello.resources.is_empty());

    // Snapshot -> applied, published, acknowledged.
    session.send(Resp::Snapshot(web(5))).await;
    match session.next().await {
        Req::Ack(ack) => assert_eq!(ack.revision, 5),
        other => panic!("expected Ack, got {other:?}"),
    }
    let applied = published(&mut published_config, 5).await;
    assert_eq!(listener_names(&applied), ["web"]);
    assert_eq!(stats.connected_to(), Some(first.url()));

    // A Delta from another revision -> Resync, nothing applied.
    session
        .send(Resp::Delta(delta(
            4,
            6,
            [listener("admin", "127.0.0.1", 9000, "web", 6)],
            [],
        )))
        .await;
    match session.next().await {
        Req::Resync(resync) => {
            assert_eq!(resync.have_revision, 5);
            assert!(
                resync.reason.contains("from revision 4"),
                "{}",
                resync.reason
            );
        }
        other => panic!("expected Resync, got {other:?}"),
    }
    assert_eq!(published_config.borrow().revision, 5);

    // Another Delta already on its way does not ask again: the next answer
    // is the Ack of the Snapshot.
    session.send(Resp::Delta(delta(6, 7, [], []))).await;

    // The Snapshot answering the Resync applies.
    session.send(Resp::Snapshot(web(6))).await;
    match session.next().await {
        Req::Ack(ack) => assert_eq!(ack.revision, 6),
        other => panic!("expected Ack, got {other:?}"),
    }
    published(&mut published_config, 6).await;

    // Two listeners on one port -> Nack naming both; the old config stays.
    let before = published_config.borrow_and_update().clone();
    session
        .send(Resp::Delta(delta(
            6,
            7,
            [listener("all", "0.0.0.0", 8080, "web", 7)],
            [],
        )))
        .await;
    match session.next().await {
        Req::Nack(nack) => {
            assert_eq!(nack.revision, 7);
            assert!(
                nack.error.contains(r#"listener "web""#)
                    && nack.error.contains(r#"listener "all""#)
                    && nack.error.contains("0.0.0.0:8080"),
                "{}",
                nack.error
            );
        }
        other => panic!("expected Nack, got {other:?}"),
    }
    assert!(!published_config.has_changed().unwrap());
    assert!(Arc::ptr_eq(&before, &published_config.borrow()));
    assert_eq!(before.revision, 6);

    // The next Delta starts from the revision the agent kept.
    session
        .send(Resp::Delta(delta(
            6,
            8,
            [listener("admin", "127.0.0.1", 9000, "web", 8)],
            [],
        )))
        .await;
    match session.next().await {
        Req::Ack(ack) => assert_eq!(ack.revision, 8),
        other => panic!("expected Ack, got {other:?}"),
    }
    let applied = published(&mut published_config, 8).await;
    assert_eq!(listener_names(&applied), ["admin", "web"]);

    // The first control plane goes away: the agent fails over to the second
    // and resumes from what it holds.
    first.stop(vec![session]).await;
    let mut session = second.accept().await;
    let hello = session.hello().await;
    session.send(Resp::Delta(delta(8, 8, [], []))).await;
    assert!(matches!(
        session.next().await,
        Req::Ack(pb::Ack { revision: 8, .. })
    ));
    assert_eq!(hello.last_applied_revision, 8);
    let mut inventory: Vec<(String, u64)> = hello
        .resources
        .iter()
        .map(|rv| {
            let r = Ref::from_pb(rv.r#ref.as_ref().unwrap(), "ref").unwrap();
            (r.to_string(), rv.revision)
        })
        .collect();
    inventory.sort();
    assert_eq!(
        inventory,
        [
            ("endpoint/web-1".to_string(), 6),
            ("listener/admin".to_string(), 8),
            ("listener/web".to_string(), 6),
            ("route/web".to_string(), 6),
            ("service/web".to_string(), 6),
        ]
    );
    assert_eq!(stats.connected_to(), Some(second.url()));

    let counters = [
        &stats.connects,
        &stats.snapshots,
        &stats.deltas,
        &stats.acks,
        &stats.nacks,
        &stats.resyncs,
    ]
    .map(|c| c.load(Ordering::Relaxed));
    assert_eq!(counters, [2, 2, 5, 4, 1, 1]);

    // Stop the agent, and start it again with no control plane reachable:
    // it serves the saved configuration.
    tokio::time::timeout(WAIT, agent.stop())
        .await
        .expect("agent did not stop")
        .unwrap();
    second.stop(vec![session]).await;

    let agent = Agent::start(config(&dir.0, vec![closed_port().await]), shutdown.clone())
        .await
        .unwrap();
    let restored = agent.config().borrow().clone();
    assert_eq!(restored.revision, 8);
    assert_eq!(listener_names(&restored), ["admin", "web"]);
    assert_eq!(restored.endpoints["web-1"].port, 8080);
    assert_eq!(agent.stats().connects.load(Ordering::Relaxed), 0);

    // Cancelling the process-wide token stops it too.
    shutdown.cancel();
    tokio::time::timeout(WAIT, agent.wait())
        .await
        .expect("agent did not stop")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_and_shutdown_is_prompt_while_connected() {
    let dir = TempDir::new();
    let mut server = Server::start().await;
    let mut cfg = config(&dir.0, vec![server.url()]);
    cfg.heartbeat_interval = Duration::from_millis(20);
    let agent = Agent::start(cfg, CancellationToken::new()).await.unwrap();
    let mut session = server.accept().await;
    session.hello().await;
    let beat = tokio::time::timeout(WAIT, session.inbound.message())
        .await
        .expect("no heartbeat")
        .unwrap()
        .unwrap();
    assert!(
        matches!(
            beat.message,
            Some(Req::Heartbeat(pb::Heartbeat { sent_at: Some(_) }))
        ),
        "{beat:?}"
    );
    tokio::time::timeout(Duration::from_secs(2), agent.stop())
        .await
        .expect("agent did not stop promptly")
        .unwrap();
    // The agent's side of the stream is closed.
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = session.inbound.message().await {}
    })
    .await
    .expect("the agent's side of the stream stayed open");
    server.stop(vec![session]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keeps_trying_until_a_control_plane_answers() {
    let dir = TempDir::new();
    let mut server = Server::start().await;
    let agent = Agent::start(
        config(&dir.0, vec![closed_port().await, server.url()]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let mut session = server.accept().await;
    assert_eq!(session.hello().await.last_applied_revision, 0);
    session.send(Resp::Snapshot(web(3))).await;
    assert!(matches!(
        session.next().await,
        Req::Ack(pb::Ack { revision: 3, .. })
    ));
    agent.stop().await.unwrap();
    server.stop(vec![session]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_saved_configuration_starts_empty() {
    let dir = TempDir::new();
    std::fs::write(dir.0.join(switchyard_agent::persist::FILE), b"\xff\xff\xff").unwrap();
    let agent = Agent::start(
        config(&dir.0, vec![closed_port().await]),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let served = agent.config().borrow().clone();
    assert_eq!(served.revision, 0);
    assert!(served.is_empty());
    agent.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_agent_ends_its_stream() {
    let dir = TempDir::new();
    let mut server = Server::start().await;
    let agent = Agent::start(config(&dir.0, vec![server.url()]), CancellationToken::new())
        .await
        .unwrap();
    let mut session = server.accept().await;
    session.hello().await;
    drop(agent);
    tokio::time::timeout(WAIT, async {
        while let Ok(Some(_)) = session.inbound.message().await {}
    })
    .await
    .expect("the dropped agent's stream stayed open");
    server.stop(vec![session]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_call_carries_the_token_read_at_each_connection() {
    let dir = TempDir::new();
    let token = dir.0.join("token");
    std::fs::write(&token, "first-token\n").unwrap();
    let mut server = Server::start().await;
    let mut cfg = config(&dir.0, vec![server.url()]);
    cfg.token_file = Some(token.clone());
    cfg.registration = Some(Registration {
        request: pb::RegisterRequest {
            node_id: "node-1".into(),
            ..Default::default()
        },
        on_shutdown: OnShutdown::Deregister,
    });
    let agent = Agent::start(cfg, CancellationToken::new()).await.unwrap();
    let mut session = server.accept().await;
    session.hello().await;

    // A new token is used from the next connection on.
    std::fs::write(&token, "second-token").unwrap();
    drop(session);
    let mut session = server.accept().await;
    session.hello().await;
    // A token file that cannot be read is retried, not fatal: two ended
    // streams, then at least two attempts without a token.
    std::fs::remove_file(&token).unwrap();
    drop(session);
    tokio::time::timeout(WAIT, async {
        while agent.stats().sync_failures.load(Ordering::Relaxed) < 4 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the missing token file was never tried");
    std::fs::write(&token, "third-token").unwrap();
    let session = server.accept().await;

    agent.stop().await.unwrap();
    let calls = server.calls.lock().unwrap().clone();
    assert_eq!(
        calls,
        [
            ("register", "Bearer first-token".to_owned()),
            ("sync", "Bearer first-token".to_owned()),
            ("register", "Bearer second-token".to_owned()),
            ("sync", "Bearer second-token".to_owned()),
            ("register", "Bearer third-token".to_owned()),
            ("sync", "Bearer third-token".to_owned()),
            ("deregister", "Bearer third-token".to_owned()),
        ]
    );
    server.stop(vec![session]).await;
}
