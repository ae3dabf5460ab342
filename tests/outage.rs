//! A store outage, end to end: a control plane on a Postgres server of the
//! test's own, which the test stops and starts again, with a real agent
//! stream and a Watch stream open across it. While the store is down the
//! control plane says so (gRPC health `NOT_SERVING`), answers calls with
//! `UNAVAILABLE` at once, and keeps its streams; when the store is back it
//! serves again, writes succeed, and they reach the same streams.
//!
//! (An SQLite file does not go away while the control plane holds it open,
//! so this outage is Postgres's; the circuit itself is tested on both.)

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard_control_plane::testing::fixtures::{item, service};
use switchyard_control_plane::testing::{PgServer, TempDir, TestServer};
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

mod common;
use common::*;

/// The server's overall gRPC health.
async fn health(url: &str) -> ServingStatus {
    let channel = tonic::transport::Endpoint::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status;
    match status {
        1 => ServingStatus::Serving,
        2 => ServingStatus::NotServing,
        _ => ServingStatus::Unknown,
    }
}

/// Waits (at most `limit`) until the health is `want`; how long it took.
async fn until_health(url: &str, want: ServingStatus, limit: Duration) -> Duration {
    let started = Instant::now();
    while health(url).await != want {
        assert!(
            started.elapsed() < limit,
            "health did not turn {want:?} within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    started.elapsed()
}

fn web_ref() -> Option<pb::ResourceRef> {
    Some(pb::ResourceRef {
        kind: pb::Kind::Service as i32,
        name: "web".into(),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_fails_fast_keeps_streams_and_recovers() {
    let pg = PgServer::start().await;
    let server = TestServer::start(&pg.url()).await;
    let url = server.url();
    let dir = Arc::new(TempDir::new());
    let agent = TestAgent::start("node-a", "web", vec![url.clone()], dir).await;
    let rev = apply(&url, proxied_web(free_port(), free_port())).await;
    agent
        .until("the first configuration", |c| c.revision >= rev)
        .await;
    let mut client = server.client().await;
    let mut watch = client
        .watch(pb::WatchRequest {
            from_revision: rev,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health(&url).await, ServingStatus::Serving);

    pg.stop().await;
    let not_serving = until_health(&url, ServingStatus::NotServing, Duration::from_secs(2)).await;
    println!("NOT_SERVING {not_serving:?} after Postgres stopped");

    // Every unary call fails fast, with a status a client retries on and
    // no storage detail.
    let mut slowest = Duration::ZERO;
    for (call, result) in [
        ("get", {
            let t = Instant::now();
            let r = client
                .get(pb::GetRequest { r#ref: web_ref() })
                .await
                .map(drop);
            (t.elapsed(), r)
        }),
        ("list", {
            let t = Instant::now();
            let r = client
                .list(pb::ListRequest {
                    kind: pb::Kind::Endpoint as i32,
                    ..Default::default()
                })
                .await
                .map(drop);
            (t.elapsed(), r)
        }),
        ("apply", {
            let t = Instant::now();
            let r = client
                .apply(pb::ApplyRequest {
                    items: vec![item(service("api"))],
                    dry_run: false,
                })
                .await
                .map(drop);
            (t.elapsed(), r)
        }),
        ("delete", {
            let t = Instant::now();
            let r = client
                .delete(pb::DeleteRequest {
                    items: vec![pb::DeleteItem {
                        r#ref: web_ref(),
                        expected_revision: None,
                    }],
                    dry_run: false,
                })
                .await
                .map(drop);
            (t.elapsed(), r)
        }),
        ("list_nodes", {
            let t = Instant::now();
            let r = client
                .list_nodes(pb::ListNodesRequest::default())
                .await
                .map(drop);
            (t.elapsed(), r)
        }),
    ]
    .map(|(call, (took, result))| {
        slowest = slowest.max(took);
        assert!(took < Duration::from_secs(1), "{call} took {took:?}");
        (call, result)
    }) {
        let status = result.expect_err(call);
        assert_eq!(
            status.code(),
            tonic::Code::Unavailable,
            "{call}: {status:?}"
        );
        let message = status.message().to_lowercase();
        for detail in ["postgres", "sqlx", "127.0.0.1", "connection"] {
            assert!(
                !message.contains(detail),
                "{call} leaks {detail:?}: {message}"
            );
        }
    }
    println!("slowest unary call during the outage: {slowest:?}");

    // A new agent is served from the replica's memory.
    let late_dir = Arc::new(TempDir::new());
    let late = TestAgent::start("node-b", "web", vec![url.clone()], late_dir).await;
    late.until("the configuration, from memory", |c| c.revision >= rev)
        .await;

    // The streams are still open.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), watch.message())
            .await
            .is_err(),
        "the watch stream answered or ended during the outage"
    );
    assert_eq!(agent.counter("connects"), 1, "the agent lost its stream");
    assert!(agent.agent.stats().connected_to().is_some());

    pg.start_again().await;
    let serving = until_health(&url, ServingStatus::Serving, Duration::from_secs(10)).await;
    println!("SERVING {serving:?} after Postgres started");
    let rev2 = apply(&url, vec![endpoint("web-2", "web", 9, "")]).await;
    assert!(rev2 > rev);
    agent
        .until("the write made after the outage", |c| {
            c.endpoints.contains_key("web-2")
        })
        .await;
    late.until("the write made after the outage", |c| {
        c.endpoints.contains_key("web-2")
    })
    .await;
    assert_eq!(agent.counter("connects"), 1, "the agent lost its stream");
    let change = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("the watch stream carries the new write")
        .unwrap()
        .expect("the watch stream is open");
    assert_eq!(change.revision, rev2);

    // Both nodes are shown connected once their status is written again.
    let started = Instant::now();
    loop {
        let nodes = client
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        let connected = nodes.iter().filter(|n| n.connected).count();
        if connected == 2 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "{nodes:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(watch);
    server.stop().await;
}
