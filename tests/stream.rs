//! The agent stream seen from a hand-driven gRPC client: exactly what the
//! control plane sends, when, and what it records about the node.

use std::time::Duration;

use switchyard::pb;
use switchyard::pb::agent_service_client::AgentServiceClient;
use switchyard_control_plane::server::Config;
use switchyard_control_plane::testing::fixtures::{endpoint, item, listener, route_to, service};
use switchyard_control_plane::testing::{TestDb, TestServer};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

mod common;
use common::stored_endpoint;

fn base_config() -> Vec<pb::ApplyItem> {
    use pb::resource::Kind as K;
    vec![
        item(service("web")),
        item(K::Endpoint(endpoint("web-0", "web", 1000))),
        item(route_to("web", "web")),
        item(K::Listener(listener("web", "127.0.0.1", 18080, "web"))),
    ]
}

fn endpoint_port(port: u32) -> pb::ApplyItem {
    item(pb::resource::Kind::Endpoint(endpoint("web-0", "web", port)))
}

/// A hand-driven agent stream.
struct RawAgent {
    tx: mpsc::Sender<pb::SyncRequest>,
    rx: Streaming<pb::SyncResponse>,
}

impl RawAgent {
    async fn connect(
        url: String,
        node: &str,
        revision: u64,
        resources: Vec<pb::ResourceVersion>,
    ) -> RawAgent {
        let mut client = AgentServiceClient::connect(url).await.unwrap();
        let (tx, out) = mpsc::channel(16);
        let hello = pb::Hello {
            node_id: node.into(),
            agent_version: "test".into(),
            last_applied_revision: revision,
            resources,
            ..Default::default()
        };
        tx.send(pb::SyncRequest {
            message: Some(pb::sync_request::Message::Hello(hello)),
        })
        .await
        .unwrap();
        let rx = client
            .sync(ReceiverStream::new(out))
            .await
            .unwrap()
            .into_inner();
        RawAgent { tx, rx }
    }

    async fn recv(&mut self) -> pb::sync_response::Message {
        tokio::time::timeout(Duration::from_secs(10), self.rx.message())
            .await
            .expect("no message in time")
            .unwrap()
            .unwrap()
            .message
            .unwrap()
    }

    /// Whether a message arrives within `wait`.
    async fn quiet_for(&mut self, wait: Duration) -> bool {
        tokio::time::timeout(wait, self.rx.message()).await.is_err()
    }

    async fn send(&self, m: pb::sync_request::Message) {
        self.tx
            .send(pb::SyncRequest { message: Some(m) })
            .await
            .unwrap();
    }

    async fn ack(&self, revision: u64) {
        self.send(pb::sync_request::Message::Ack(pb::Ack {
            revision,
            ..Default::default()
        }))
        .await;
    }

    /// Reads and acks pushes until the agent holds `revision` or newer; the
    /// replica's in-memory state may trail a write by a few milliseconds.
    /// Returns the kinds of push received ("snapshot"/"delta").
    async fn converge(&mut self, revision: u64) -> Vec<&'static str> {
        let mut kinds = vec![];
        loop {
            let (kind, at) = match self.recv().await {
                pb::sync_response::Message::Snapshot(s) => ("snapshot", s.revision),
                pb::sync_response::Message::Delta(d) => ("delta", d.to_revision),
                pb::sync_response::Message::Heartbeat(_) => continue,
            };
            kinds.push(kind);
            self.ack(at).await;
            if at >= revision {
                return kinds;
            }
        }
    }
}

async fn apply(server: &TestServer, items: Vec<pb::ApplyItem>) -> u64 {
    server
        .client()
        .await
        .apply(pb::ApplyRequest {
            items,
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

async fn nodes(server: &TestServer, rollout: u64) -> pb::ListNodesResponse {
    server
        .client()
        .await
        .list_nodes(pb::ListNodesRequest {
            rollout_revision: rollout,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
}

/// Polls ListNodes until `done` holds (node status is written in batches).
async fn wait_nodes(
    server: &TestServer,
    rollout: u64,
    done: impl Fn(&pb::ListNodesResponse) -> bool,
) -> pb::ListNodesResponse {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let resp = nodes(server, rollout).await;
        if done(&resp) {
            return resp;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node status never reached the expected state: {resp:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// An agent that stops reading and acking while 100 writes land: the
/// control plane queues nothing for it (one push stays in flight), and when
/// it reads again it gets exactly one coalesced delta to the newest revision.
async fn stuck_agent_gets_one_coalesced_delta(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let first = apply(&server, base_config()).await;
    let mut agent = RawAgent::connect(server.url(), "slow", 0, vec![]).await;
    assert_eq!(agent.converge(first).await[0], "snapshot");

    // The first write is pushed; then the agent neither reads nor acks while
    // the writes continue.
    let mut client = server.client().await;
    let mut last = 0;
    for port in 2000..2100 {
        let items = vec![endpoint_port(port)];
        last = client
            .apply(pb::ApplyRequest {
                items,
                dry_run: false,
            })
            .await
            .unwrap()
            .into_inner()
            .revision;
    }
    let pushed = match agent.recv().await {
        pb::sync_response::Message::Delta(d) => d,
        other => panic!("expected a delta, got {other:?}"),
    };
    assert_eq!(pushed.from_revision, first);
    assert!(
        agent.quiet_for(Duration::from_millis(300)).await,
        "nothing may be pushed while a push is in flight"
    );

    // Reading again: one delta from the acked revision to the newest.
    agent.ack(pushed.to_revision).await;
    let delta = match agent.recv().await {
        pb::sync_response::Message::Delta(d) => d,
        other => panic!("expected a delta, got {other:?}"),
    };
    assert_eq!(
        (delta.from_revision, delta.to_revision),
        (pushed.to_revision, last)
    );
    assert_eq!(delta.upserts.len(), 1, "only the endpoint changed");
    match delta.upserts[0].kind.as_ref().unwrap() {
        pb::resource::Kind::Endpoint(e) => assert_eq!(e.port, 2099),
        other => panic!("unexpected {other:?}"),
    }
    agent.ack(delta.to_revision).await;
    assert!(
        agent.quiet_for(Duration::from_millis(300)).await,
        "converged: nothing more to send"
    );
    let status = wait_nodes(&server, last, |r| r.nodes_at_revision == 1).await;
    assert_eq!(status.nodes[0].applied_revision, last);
    server.stop().await;
}

/// Writes outside a node's scope send it nothing, yet its rollout status
/// follows; a resumed agent gets a delta (never a snapshot); a Nack is
/// recorded and not answered by re-sending the same configuration.
async fn scope_resume_and_nack(db: TestDb) {
    use pb::resource::Kind as K;
    let server = TestServer::start(db.url()).await;
    let first = apply(&server, base_config()).await;
    let mut agent = RawAgent::connect(server.url(), "edge-1", 0, vec![]).await;
    agent.converge(first).await;

    // A service no listener reaches: nothing is sent, but the node counts
    // as current at the new revision.
    let unrelated = apply(
        &server,
        vec![item(K::Service(pb::Service {
            name: "batch".into(),
            ..Default::default()
        }))],
    )
    .await;
    let extra = tokio::time::timeout(Duration::from_millis(300), agent.rx.message()).await;
    assert!(
        extra.is_err(),
        "out-of-scope write must send nothing: {extra:?}"
    );
    wait_nodes(&server, unrelated, |r| r.nodes_at_revision == 1).await;

    // The agent goes away and comes back holding what it had.
    drop(agent);
    wait_nodes(&server, 0, |r| r.nodes.iter().all(|n| !n.connected)).await;
    let changed = apply(&server, vec![endpoint_port(3000)]).await;
    let inventory = [
        (pb::Kind::Service, "web"),
        (pb::Kind::Endpoint, "web-0"),
        (pb::Kind::Route, "web"),
        (pb::Kind::Listener, "web"),
    ]
    .iter()
    .map(|(kind, name)| pb::ResourceVersion {
        r#ref: Some(pb::ResourceRef {
            kind: *kind as i32,
            name: name.to_string(),
        }),
        revision: first,
    })
    .collect();
    let mut agent = RawAgent::connect(server.url(), "edge-1", first, inventory).await;
    let delta = match agent.recv().await {
        pb::sync_response::Message::Delta(d) => d,
        other => panic!("a resumed agent must get a delta, got {other:?}"),
    };
    assert_eq!((delta.from_revision, delta.to_revision), (first, changed));
    assert_eq!(delta.upserts.len(), 1);
    assert!(delta.removals.is_empty());

    // The agent refuses it: recorded, and not sent again until the
    // configuration moves on.
    agent
        .send(pb::sync_request::Message::Nack(pb::Nack {
            revision: changed,
            error: "port 3000 is taken".into(),
        }))
        .await;
    assert!(
        agent.quiet_for(Duration::from_millis(300)).await,
        "a nack is not answered by the same push"
    );
    let status = wait_nodes(&server, 0, |r| {
        r.nodes.first().is_some_and(|n| n.last_nack.is_some())
    })
    .await;
    let nack = status.nodes[0].last_nack.clone().unwrap();
    assert_eq!(
        (nack.revision, nack.error.as_str()),
        (changed, "port 3000 is taken")
    );
    assert_eq!(
        status.nodes[0].applied_revision, first,
        "the refused revision is not counted as applied"
    );

    // The next change is pushed from the revision the agent still holds.
    let fixed = apply(&server, vec![endpoint_port(3001)]).await;
    let delta = match agent.recv().await {
        pb::sync_response::Message::Delta(d) => d,
        other => panic!("expected a delta, got {other:?}"),
    };
    assert_eq!((delta.from_revision, delta.to_revision), (first, fixed));
    agent.ack(fixed).await;
    let status = wait_nodes(&server, fixed, |r| r.nodes_at_revision == 1).await;
    assert!(
        status.nodes[0].last_nack.is_none(),
        "an ack clears the nack"
    );
    assert!(status.nodes[0].connected);
    server.stop().await;
}

/// A node that stops talking is disconnected after its lease.
async fn silent_agent_loses_its_lease(db: TestDb) {
    let config = Config {
        node_lease: Duration::from_millis(600),
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    apply(&server, base_config()).await;
    let mut agent = RawAgent::connect(server.url(), "mute", 0, vec![]).await;
    let snapshot = agent.recv().await;
    assert!(matches!(snapshot, pb::sync_response::Message::Snapshot(_)));
    wait_nodes(&server, 0, |r| r.nodes.first().is_some_and(|n| n.connected)).await;
    // It acks nothing and sends no heartbeat: the stream is closed.
    let end = tokio::time::timeout(Duration::from_secs(10), agent.rx.message())
        .await
        .expect("stream closed in time");
    assert!(matches!(end, Ok(None) | Err(_)), "{end:?}");
    wait_nodes(&server, 0, |r| {
        r.nodes.first().is_some_and(|n| !n.connected)
    })
    .await;
    server.stop().await;
}

/// An agent claiming a revision the store never reached (its control plane's
/// database was restored from an older backup, say) starts over from a
/// snapshot instead of waiting forever.
async fn agent_ahead_of_the_store_gets_a_snapshot(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let first = apply(&server, base_config()).await;
    let stale = vec![pb::ResourceVersion {
        r#ref: Some(pb::ResourceRef {
            kind: pb::Kind::Service as i32,
            name: "gone".into(),
        }),
        revision: 900,
    }];
    let mut agent = RawAgent::connect(server.url(), "restored", 999, stale).await;
    match agent.recv().await {
        pb::sync_response::Message::Snapshot(s) => {
            assert_eq!(s.revision, first);
            assert_eq!(s.services.len(), 1);
        }
        other => panic!("expected a snapshot, got {other:?}"),
    }
    server.stop().await;
}

/// Bad first messages are refused with a clear status.
async fn hello_is_validated(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = AgentServiceClient::connect(server.url()).await.unwrap();
    let hello = pb::Hello {
        node_id: "Not A Name".into(),
        ..Default::default()
    };
    let first = pb::SyncRequest {
        message: Some(pb::sync_request::Message::Hello(hello)),
    };
    let err = client.sync(tokio_stream::iter([first])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hello.node_id"), "{}", err.message());
    let ack = pb::SyncRequest {
        message: Some(pb::sync_request::Message::Ack(pb::Ack {
            revision: 1,
            ..Default::default()
        })),
    };
    let err = client.sync(tokio_stream::iter([ack])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("hello"), "{}", err.message());
    server.stop().await;
}

/// `service` web with endpoint `name`, owned by `node`.
fn owned_endpoint(name: &str, node: &str) -> pb::ApplyItem {
    item(pb::resource::Kind::Endpoint(pb::Endpoint {
        node: node.into(),
        ..endpoint(name, "web", 1000)
    }))
}

fn health_report(endpoint: &str, health: pb::Health, reason: &str) -> pb::sync_request::Message {
    pb::sync_request::Message::Health(pb::HealthReport {
        endpoints: vec![pb::EndpointHealth {
            endpoint: endpoint.into(),
            health: health as i32,
            reason: reason.into(),
            observed_at: None,
        }],
    })
}

/// Revisions that touched endpoint `name` after `from`, as the Watch API
/// reports them, read until `until` has passed.
async fn endpoint_writes(
    server: &TestServer,
    name: &str,
    from: u64,
    until: Duration,
) -> Vec<pb::Endpoint> {
    let mut watch = server
        .client()
        .await
        .watch(pb::WatchRequest {
            from_revision: from,
            kinds: vec![pb::Kind::Endpoint as i32],
        })
        .await
        .unwrap()
        .into_inner();
    let mut seen = vec![];
    let deadline = tokio::time::Instant::now() + until;
    while let Ok(Ok(Some(batch))) = tokio::time::timeout_at(deadline, watch.message()).await {
        for change in batch.changes {
            if let Some(pb::resource::Kind::Endpoint(e)) = change.resource.and_then(|r| r.kind)
                && e.name == name
            {
                seen.push(e);
            }
        }
    }
    seen
}

/// An endpoint whose health flips every 20 ms: its writes to the store stay
/// a handful, it is held unhealthy while it flaps, and once it calms down
/// its latest reported health is written.
async fn flapping_endpoint_is_damped(db: TestDb) {
    let config = Config {
        damping: switchyard_control_plane::health::Damping {
            half_life: Duration::from_millis(500),
            suppress: 3.0,
            reuse: 1.0,
        },
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    let start = apply(
        &server,
        vec![item(service("web")), owned_endpoint("flappy", "n1")],
    )
    .await;
    let mut agent = RawAgent::connect(server.url(), "n1", 0, vec![]).await;
    agent.converge(start).await;

    let flips = 100;
    let watch = endpoint_writes(&server, "flappy", start, Duration::from_secs(3));
    let flapping = async {
        for i in 0..flips {
            let health = if i % 2 == 0 {
                pb::Health::Healthy
            } else {
                pb::Health::Unhealthy
            };
            agent
                .send(health_report("flappy", health, &format!("flip {i}")))
                .await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The last word: healthy.
        agent
            .send(health_report("flappy", pb::Health::Healthy, "calm"))
            .await;
    };
    let (seen, ()) = tokio::join!(watch, flapping);
    eprintln!("{flips} flips reported, {} written during 3 s", seen.len());
    assert!(!seen.is_empty());
    assert!(
        seen.len() <= 4,
        "writes are bounded by damping: {} for {flips} flips",
        seen.len()
    );
    let held = seen.last().unwrap();
    assert_eq!(
        held.health(),
        pb::Health::Unhealthy,
        "held while flapping: {held:?}"
    );
    assert!(held.health_reason.starts_with("flapping"), "{held:?}");

    // The penalty (capped at 6) decays below 1 in about 1.3 s: then the
    // latest report is written.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let e = stored_endpoint(&server, "flappy").await.unwrap();
        if e.health() == pb::Health::Healthy {
            assert_eq!(e.health_reason, "calm");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never released: {e:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await;
}

/// An agent reporting health for another node's endpoint is refused with
/// PERMISSION_DENIED and nothing of its report is written.
async fn health_for_another_nodes_endpoint_is_denied(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let start = apply(
        &server,
        vec![
            item(service("web")),
            owned_endpoint("mine", "n1"),
            owned_endpoint("theirs", "n2"),
        ],
    )
    .await;
    let mut agent = RawAgent::connect(server.url(), "n1", 0, vec![]).await;
    agent.converge(start).await;
    agent
        .send(pb::sync_request::Message::Health(pb::HealthReport {
            endpoints: vec![
                pb::EndpointHealth {
                    endpoint: "mine".into(),
                    health: pb::Health::Healthy as i32,
                    ..Default::default()
                },
                pb::EndpointHealth {
                    endpoint: "theirs".into(),
                    health: pb::Health::Unhealthy as i32,
                    ..Default::default()
                },
            ],
        }))
        .await;
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), agent.rx.message()).await {
            Ok(Err(status)) => break status,
            Ok(Ok(Some(_))) => continue,
            other => panic!("expected the stream to fail, got {other:?}"),
        }
    };
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("\"theirs\""), "{status:?}");

    // The owner's report is accepted and written.
    let mut owner = RawAgent::connect(server.url(), "n2", 0, vec![]).await;
    owner.converge(start).await;
    owner
        .send(health_report("theirs", pb::Health::Unhealthy, "HTTP 503"))
        .await;
    let written = endpoint_writes(&server, "theirs", start, Duration::from_secs(2)).await;
    assert_eq!(written.len(), 1);
    assert_eq!(written[0].health(), pb::Health::Unhealthy);
    assert_eq!(written[0].health_reason, "HTTP 503");
    // Reports are written in arrival order: had any of the refused one been
    // taken, it would be in the store by now. The owner's is the only write.
    let revision = server
        .client()
        .await
        .list(pb::ListRequest {
            kind: pb::Kind::Endpoint as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision;
    assert_eq!(
        revision,
        start + 1,
        "nothing of the refused report was written"
    );
    assert_eq!(
        stored_endpoint(&server, "mine").await.unwrap().health(),
        pb::Health::Unknown
    );
    server.stop().await;
}

/// Waits until `name` is stored with `health`; when, since `from`.
async fn until_health(
    server: &TestServer,
    name: &str,
    health: pb::Health,
    from: tokio::time::Instant,
) -> Duration {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if stored_endpoint(server, name).await.unwrap().health() == health {
            return from.elapsed();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{name} never became {health:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A health report after a quiet spell is written at once; the next one
/// waits for the flush interval, which bounds the write rate.
async fn health_after_a_quiet_spell_is_written_at_once(db: TestDb) {
    let interval = Duration::from_secs(2);
    let config = Config {
        health_flush_interval: interval,
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    let start = apply(
        &server,
        vec![
            item(service("web")),
            owned_endpoint("a", "n1"),
            owned_endpoint("b", "n1"),
        ],
    )
    .await;
    let mut agent = RawAgent::connect(server.url(), "n1", 0, vec![]).await;
    agent.converge(start).await;

    let sent = tokio::time::Instant::now();
    agent
        .send(health_report("a", pb::Health::Unhealthy, "down"))
        .await;
    let first = until_health(&server, "a", pb::Health::Unhealthy, sent).await;
    assert!(
        first < interval / 2,
        "written {first:?} after the report, not at the next flush"
    );

    // The first write began after its report was sent, and the next may
    // not begin sooner than one interval after it.
    agent
        .send(health_report("b", pb::Health::Unhealthy, "down"))
        .await;
    let second = until_health(&server, "b", pb::Health::Unhealthy, sent).await;
    assert!(
        second >= interval,
        "b written {second:?} after a's report: within one flush interval of a's write"
    );
    server.stop().await;
}

switchyard_control_plane::both_backends!(
    health_after_a_quiet_spell_is_written_at_once,
    flapping_endpoint_is_damped,
    health_for_another_nodes_endpoint_is_denied,
    stuck_agent_gets_one_coalesced_delta,
    scope_resume_and_nack,
    silent_agent_loses_its_lease,
    agent_ahead_of_the_store_gets_a_snapshot,
    hello_is_validated
);
