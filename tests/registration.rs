//! `AgentService.Register` / `Deregister` over gRPC against a real control
//! plane and store: a node registers its own service instances, and only
//! its own.

use switchyard::pb;
use switchyard::pb::agent_service_client::AgentServiceClient;
use switchyard_agent::testing::http_call;
use switchyard_control_plane::testing::fixtures::{endpoint, item, service};
use switchyard_control_plane::testing::{TestDb, TestServer};
use tonic::Code;
use tonic::transport::Channel;

mod common;
use common::stored_endpoint;

async fn agent_client(server: &TestServer) -> AgentServiceClient<Channel> {
    AgentServiceClient::connect(server.url()).await.unwrap()
}

fn register(
    node: &str,
    endpoints: Vec<pb::Endpoint>,
    services: Vec<pb::Service>,
) -> pb::RegisterRequest {
    pb::RegisterRequest {
        node_id: node.into(),
        endpoints,
        services,
        replace: false,
    }
}

async fn revision(server: &TestServer) -> u64 {
    server
        .client()
        .await
        .list(pb::ListRequest {
            kind: pb::Kind::Service as i32,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .revision
}

fn actions(response: &pb::RegisterResponse) -> Vec<(String, pb::ApplyAction)> {
    response
        .results
        .iter()
        .map(|r| (r.r#ref.as_ref().unwrap().name.clone(), r.action()))
        .collect()
}

async fn a_node_registers_its_instances_and_only_its_own(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut agents = agent_client(&server).await;

    // The service does not exist and is not offered: refused, named.
    let err = agents
        .register(register(
            "n1",
            vec![endpoint("api-n1", "api", 9000)],
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("endpoints[0]"), "{}", err.message());
    assert_eq!(revision(&server).await, 0, "nothing written");

    // Offered: created with the endpoint, which the node now owns.
    let api = pb::Service {
        name: "api".into(),
        ..Default::default()
    };
    let done = agents
        .register(register(
            "n1",
            vec![endpoint("api-n1", "api", 9000)],
            vec![api.clone()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        actions(&done),
        vec![
            ("api".into(), pb::ApplyAction::Created),
            ("api-n1".into(), pb::ApplyAction::Created)
        ]
    );
    assert_eq!(stored_endpoint(&server, "api-n1").await.unwrap().node, "n1");

    // Again, as after an agent restart: nothing changes; an existing
    // service is never rewritten by a node.
    let again = agents
        .register(register(
            "n1",
            vec![endpoint("api-n1", "api", 9000)],
            vec![api.clone()],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.revision, done.revision);
    assert_eq!(
        actions(&again),
        vec![("api-n1".into(), pb::ApplyAction::Unchanged)]
    );

    // Another node may not take it over, nor name itself for another.
    let err = agents
        .register(register(
            "n2",
            vec![endpoint("api-n1", "api", 9001)],
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(err.message().contains("endpoints[0]"), "{}", err.message());
    let err = agents
        .register(register(
            "n2",
            vec![pb::Endpoint {
                node: "n1".into(),
                ..endpoint("api-n2", "api", 9001)
            }],
            vec![],
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        err.message().contains("endpoints[0].node"),
        "{}",
        err.message()
    );
    // An operator's endpoint (no owner) is not a node's to register either.
    server
        .client()
        .await
        .apply(pb::ApplyRequest {
            items: vec![
                item(service("web")),
                item(pb::resource::Kind::Endpoint(endpoint("web-1", "web", 80))),
            ],
            dry_run: false,
        })
        .await
        .unwrap();
    let before = revision(&server).await;
    let err = agents
        .register(register("n1", vec![endpoint("web-1", "web", 81)], vec![]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(revision(&server).await, before, "nothing written");
    assert_eq!(stored_endpoint(&server, "api-n1").await.unwrap().port, 9000);
    server.stop().await;
}

async fn deregister_drains_or_deletes_own_endpoints(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut agents = agent_client(&server).await;
    let api = pb::Service {
        name: "api".into(),
        ..Default::default()
    };
    agents
        .register(register(
            "n1",
            vec![
                endpoint("api-1", "api", 9000),
                endpoint("api-2", "api", 9001),
            ],
            vec![api],
        ))
        .await
        .unwrap();
    let deregister = |names: &[&str], node: &str, mode: pb::DeregisterMode| pb::DeregisterRequest {
        node_id: node.into(),
        endpoints: names.iter().map(|n| n.to_string()).collect(),
        mode: mode as i32,
    };

    let err = agents
        .deregister(deregister(&["api-1"], "n2", pb::DeregisterMode::Delete))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(stored_endpoint(&server, "api-1").await.is_some());

    agents
        .deregister(deregister(&["api-1"], "n1", pb::DeregisterMode::Drain))
        .await
        .unwrap();
    let drained = stored_endpoint(&server, "api-1").await.unwrap();
    assert_eq!(drained.health(), pb::Health::Draining);
    assert!(drained.health_reason.contains("draining"), "{drained:?}");

    agents
        .deregister(deregister(
            &["api-2", "never-was"],
            "n1",
            pb::DeregisterMode::Delete,
        ))
        .await
        .unwrap();
    assert!(stored_endpoint(&server, "api-2").await.is_none());
    assert!(stored_endpoint(&server, "api-1").await.is_some());
    server.stop().await;
}

/// With `replace`, the request is the node's whole registration: what it
/// registered before and no longer lists goes away; endpoints an operator
/// assigned to the node stay.
async fn replace_removes_what_the_node_no_longer_declares(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut agents = agent_client(&server).await;
    let api = pb::Service {
        name: "api".into(),
        ..Default::default()
    };
    let mut request = register(
        "n1",
        vec![
            endpoint("api-1", "api", 9000),
            endpoint("api-2", "api", 9001),
        ],
        vec![api],
    );
    request.replace = true;
    agents.register(request.clone()).await.unwrap();
    let registered = stored_endpoint(&server, "api-2").await.unwrap();
    assert_eq!(registered.labels["switchyard.io/registered-by"], "agent");
    server
        .client()
        .await
        .apply(pb::ApplyRequest {
            items: vec![item(pb::resource::Kind::Endpoint(pb::Endpoint {
                node: "n1".into(),
                ..endpoint("ops-assigned", "api", 9100)
            }))],
            dry_run: false,
        })
        .await
        .unwrap();

    request.endpoints.truncate(1);
    // Right after the first registration: the control plane reads its own
    // writes before deciding what is stale.
    agents.register(request.clone()).await.unwrap();
    assert!(
        stored_endpoint(&server, "api-2").await.is_none(),
        "api-2 removed"
    );
    assert!(stored_endpoint(&server, "api-1").await.is_some());
    assert!(stored_endpoint(&server, "ops-assigned").await.is_some());
    server.stop().await;
}

/// A process on the node registers itself through the agent's local API;
/// the agent registers it with the control plane at once, and deregisters
/// it the same way.
async fn local_api_registrations_reach_the_control_plane(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let dir = switchyard_control_plane::testing::TempDir::new();
    let agent = switchyard_agent::Agent::start(
        switchyard_agent::Config {
            node_id: "n1".into(),
            control_planes: vec![server.url()],
            data_dir: dir.path().to_path_buf(),
            backoff_base: std::time::Duration::from_millis(20),
            ..Default::default()
        },
        tokio_util::sync::CancellationToken::new(),
    )
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = tokio_util::sync::CancellationToken::new();
    let api = tokio::spawn(switchyard_agent::local::serve_registrations(
        listener,
        "n1".into(),
        agent.registrations(),
        stop.clone(),
    ));
    let call = |method, path, body| async move { http_call(port, method, path, body).await.0 };
    let until = |present: bool| {
        let server = &server;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            while stored_endpoint(server, "api-n1-9000").await.is_some() != present {
                assert!(
                    std::time::Instant::now() < deadline,
                    "never present={present}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
        }
    };
    let status = call(
        "PUT",
        "/v1/registrations",
        r#"{"service": "api", "address": "127.0.0.1", "port": 9000, "create": {"protocol": "http"}}"#,
    )
    .await;
    assert_eq!(status, 202);
    until(true).await;
    assert_eq!(
        stored_endpoint(&server, "api-n1-9000").await.unwrap().node,
        "n1"
    );
    assert_eq!(
        call("DELETE", "/v1/registrations/api-n1-9000", "").await,
        202
    );
    until(false).await;

    stop.cancel();
    api.await.unwrap();
    agent.stop().await.unwrap();
    server.stop().await;
}

switchyard_control_plane::both_backends!(
    local_api_registrations_reach_the_control_plane,
    replace_removes_what_the_node_no_longer_declares,
    a_node_registers_its_instances_and_only_its_own,
    deregister_drains_or_deletes_own_endpoints,
);
