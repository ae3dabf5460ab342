//! One stream per node id: a second agent (another process, e.g. a copy
//! with the same `--node-id`, or an impostor) connecting for a node that has
//! a live stream is refused with `ALREADY_EXISTS`, on the same replica or
//! another; the first keeps its stream and its `ListNodes` row, before and
//! after the second gives up. The same agent reconnecting (its old stream
//! not yet seen dead) replaces its old stream at once.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard::pb::agent_service_client::AgentServiceClient;
use switchyard_control_plane::both_backends;
use switchyard_control_plane::server::Config;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

mod common;
use common::*;

both_backends!(
    a_second_agent_with_the_same_node_id_is_refused_and_the_first_keeps_its_row,
    the_same_agent_reconnecting_replaces_its_old_stream,
);

/// Opens a Sync stream for `node` from agent instance `instance`: the
/// first push, or the status the control plane refused it with. The
/// returned sender keeps the stream open.
async fn hello(
    url: &str,
    node: &str,
    instance: &str,
) -> (
    mpsc::Sender<pb::SyncRequest>,
    Result<tonic::Streaming<pb::SyncResponse>, tonic::Status>,
) {
    let mut client = AgentServiceClient::connect(url.to_owned()).await.unwrap();
    let (tx, out) = mpsc::channel(16);
    let hello = pb::Hello {
        node_id: node.into(),
        agent_version: "impostor".into(),
        instance_id: instance.into(),
        ..Default::default()
    };
    tx.send(pb::SyncRequest {
        message: Some(pb::sync_request::Message::Hello(hello)),
    })
    .await
    .unwrap();
    let stream = client
        .sync(ReceiverStream::new(out))
        .await
        .map(tonic::Response::into_inner);
    (tx, stream)
}

/// node-1's row, as ListNodes shows it.
async fn row(server: &TestServer) -> pb::Node {
    let nodes = server
        .client()
        .await
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .unwrap()
        .into_inner()
        .nodes;
    nodes
        .into_iter()
        .find(|n| n.id == "node-1")
        .expect("node-1 listed")
}

/// Waits until node-1's row satisfies `done`.
async fn until_row(server: &TestServer, what: &str, done: impl Fn(&pb::Node) -> bool) -> pb::Node {
    let started = Instant::now();
    loop {
        let node = row(server).await;
        if done(&node) {
            return node;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never {what}: {node:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_refused(status: &tonic::Status) {
    assert_eq!(status.code(), tonic::Code::AlreadyExists, "{status:?}");
    let message = status.message();
    assert!(
        message.contains("node-1") && message.contains("live"),
        "{message}"
    );
}

async fn a_second_agent_with_the_same_node_id_is_refused_and_the_first_keeps_its_row(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let first =
        TestAgent::start("node-1", "web", vec![url.clone()], Arc::new(TempDir::new())).await;
    let rev = apply(&url, proxied_web(free_port(), free_port())).await;
    first
        .until("the configuration", |c| c.revision >= rev)
        .await;
    let before = until_row(&server, "connected", |n| {
        n.connected && n.applied_revision >= rev
    })
    .await;

    // A second agent process with the same node id: refused, again and again.
    let second =
        TestAgent::start("node-1", "api", vec![url.clone()], Arc::new(TempDir::new())).await;
    let started = Instant::now();
    while second
        .agent
        .stats()
        .sync_failures
        .load(std::sync::atomic::Ordering::Relaxed)
        < 2
    {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the second agent was never refused"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        second.counter("connects"),
        0,
        "the second agent got a stream"
    );
    assert!(
        second.config().is_empty(),
        "the second agent got a configuration"
    );
    // What it is told.
    let (_tx, refused) = hello(&url, "node-1", "another-instance").await;
    assert_refused(&refused.expect_err("a second stream is refused"));
    let (_tx, refused) = hello(&url, "node-1", "").await;
    assert_refused(&refused.expect_err("a stream without an instance id is refused"));

    // The first keeps its stream and its row.
    let rev2 = apply(&url, vec![endpoint("web-2", "web", 9, "")]).await;
    first
        .until("the next write", |c| c.endpoints.contains_key("web-2"))
        .await;
    assert_eq!(
        first.counter("connects"),
        1,
        "the first agent lost its stream"
    );
    let during = until_row(&server, "current", |n| n.applied_revision >= rev2).await;
    assert!(during.connected);
    assert_eq!(
        during.labels, before.labels,
        "the row took the second agent's labels"
    );
    assert_eq!(during.replica, before.replica);

    // The second gives up: the first is still shown connected, throughout.
    second.agent.stop().await.unwrap();
    for _ in 0..20 {
        let node = row(&server).await;
        assert!(
            node.connected,
            "shown disconnected after the second left: {node:?}"
        );
        assert_eq!(node.labels, before.labels);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(first.counter("connects"), 1);
    server.stop().await;
}

async fn the_same_agent_reconnecting_replaces_its_old_stream(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let (_old_tx, old) = hello(&url, "node-1", "instance-a").await;
    let mut old = old.expect("the first stream is admitted");
    old.message().await.unwrap().expect("a first push");
    until_row(&server, "connected", |n| n.connected).await;
    // Its old stream still open (as after a network cut not yet noticed),
    // the same agent connects again: admitted, and the old stream ends.
    let (_new_tx, new) = hello(&url, "node-1", "instance-a").await;
    let mut new = new.expect("the same instance is admitted");
    new.message().await.unwrap().expect("a first push");
    let ended = tokio::time::timeout(Duration::from_secs(5), old.message())
        .await
        .expect("the old stream ended");
    assert!(matches!(ended, Ok(None)), "{ended:?}");
    // The old stream's end leaves the row to the new one.
    for _ in 0..10 {
        assert!(row(&server).await.connected);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Another instance is still refused while the new stream lives.
    let (_tx, refused) = hello(&url, "node-1", "instance-b").await;
    assert_refused(&refused.expect_err("another instance is refused"));
    server.stop().await;
}

/// Two replicas on one Postgres database: the node's stream lives on the
/// first; a second agent connecting to the second replica is refused,
/// naming the first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_agent_on_another_replica_is_refused() {
    let db = TestDb::postgres().await;
    let replica = |name: &str| Config {
        replica: name.into(),
        ..TestServer::config()
    };
    let one = TestServer::start_with(db.url(), replica("replica-1")).await;
    let two = TestServer::start_with(db.url(), replica("replica-2")).await;
    let first = TestAgent::start("node-1", "web", vec![one.url()], Arc::new(TempDir::new())).await;
    let rev = apply(&one.url(), proxied_web(free_port(), free_port())).await;
    first
        .until("the configuration", |c| c.revision >= rev)
        .await;
    until_row(&two, "connected to replica-1", |n| {
        n.connected && n.replica == "replica-1"
    })
    .await;

    let (_tx, refused) = hello(&two.url(), "node-1", "another-instance").await;
    let status = refused.expect_err("refused on the other replica");
    assert_refused(&status);
    assert!(status.message().contains("replica-1"), "{status:?}");
    let node = row(&two).await;
    assert!(node.connected && node.replica == "replica-1", "{node:?}");
    assert_eq!(first.counter("connects"), 1);
    two.stop().await;
    one.stop().await;
}
