//! Authentication and authorisation over real gRPC: a control plane with
//! authentication on, over a real store (Postgres and SQLite), called with
//! no credential, a reader, an admin, an agent token bound to node `a`, and
//! a revoked token — every RPC, one table.

use std::path::Path;
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard::pb::agent_service_client::AgentServiceClient;
use switchyard::pb::operator_service_client::OperatorServiceClient;
use switchyard::pb::token_service_client::TokenServiceClient;
use switchyard_control_plane::auth;
use switchyard_control_plane::testing::fixtures::{endpoint, item, service};
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use tonic::Code;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

/// A server with authentication on, bootstrapped into `dir`; returns it
/// with the bootstrap admin's secret.
async fn start(db: &TestDb, dir: &Path) -> (TestServer, String) {
    let file = dir.join("admin.token");
    let config = switchyard_control_plane::server::Config {
        auth: auth::Config {
            enforce: true,
            ..auth::Config::default()
        },
        bootstrap_token_file: Some(file.clone()),
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    let secret = read_secret(&file).await;
    (server, secret)
}

/// The secret in `file`, once the server has written it.
async fn read_secret(file: &Path) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(text) = std::fs::read_to_string(file)
            && text.ends_with('\n')
        {
            return text.trim().to_owned();
        }
        assert!(Instant::now() < deadline, "no bootstrap token in {file:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A request carrying `secret` as a bearer token (none when empty).
fn req<T>(secret: &str, message: T) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    if !secret.is_empty() {
        let value: MetadataValue<_> = format!("Bearer {secret}").parse().unwrap();
        request.metadata_mut().insert("authorization", value);
    }
    request.set_timeout(Duration::from_secs(10));
    request
}

async fn channel(server: &TestServer) -> Channel {
    Channel::from_shared(server.url())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn create_token(
    channel: &Channel,
    admin: &str,
    name: &str,
    role: pb::Role,
    node: &str,
) -> String {
    TokenServiceClient::new(channel.clone())
        .create_token(req(
            admin,
            pb::CreateTokenRequest {
                name: name.into(),
                role: role as i32,
                node: node.into(),
            },
        ))
        .await
        .expect("create token")
        .into_inner()
        .secret
}

fn code<T>(result: Result<T, tonic::Status>) -> Code {
    match result {
        Ok(_) => Code::Ok,
        Err(status) => {
            assert!(status.message().len() < 512, "{status:?}");
            status.code()
        }
    }
}

/// The RPCs of the matrix, each called once as `secret`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Rpc {
    Apply,
    Delete,
    Get,
    List,
    Watch,
    ListNodes,
    CreateToken,
    ListTokens,
    RevokeToken,
    Sync,
    Register,
    Deregister,
    Health,
    Reflection,
}

const RPCS: [Rpc; 14] = [
    Rpc::Apply,
    Rpc::Delete,
    Rpc::Get,
    Rpc::List,
    Rpc::Watch,
    Rpc::ListNodes,
    Rpc::CreateToken,
    Rpc::ListTokens,
    Rpc::RevokeToken,
    Rpc::Sync,
    Rpc::Register,
    Rpc::Deregister,
    Rpc::Health,
    Rpc::Reflection,
];

async fn call(channel: &Channel, rpc: Rpc, secret: &str, who: &str) -> Code {
    let mut op = OperatorServiceClient::new(channel.clone());
    let mut tokens = TokenServiceClient::new(channel.clone());
    let mut agents = AgentServiceClient::new(channel.clone());
    match rpc {
        Rpc::Apply => code(
            op.apply(req(
                secret,
                pb::ApplyRequest {
                    items: vec![item(service("web"))],
                    dry_run: false,
                },
            ))
            .await,
        ),
        Rpc::Delete => code(
            op.delete(req(
                secret,
                pb::DeleteRequest {
                    items: vec![pb::DeleteItem {
                        r#ref: Some(pb::ResourceRef {
                            kind: pb::Kind::Service as i32,
                            name: "spare".into(),
                        }),
                        expected_revision: None,
                    }],
                    dry_run: true,
                },
            ))
            .await,
        ),
        Rpc::Get => code(
            op.get(req(
                secret,
                pb::GetRequest {
                    r#ref: Some(pb::ResourceRef {
                        kind: pb::Kind::Service as i32,
                        name: "web".into(),
                    }),
                },
            ))
            .await,
        ),
        Rpc::List => code(
            op.list(req(
                secret,
                pb::ListRequest {
                    kind: pb::Kind::Service as i32,
                    ..Default::default()
                },
            ))
            .await,
        ),
        Rpc::Watch => code(
            op.watch(req(
                secret,
                pb::WatchRequest {
                    from_revision: 0,
                    kinds: vec![],
                },
            ))
            .await,
        ),
        Rpc::ListNodes => code(
            op.list_nodes(req(secret, pb::ListNodesRequest::default()))
                .await,
        ),
        Rpc::CreateToken => code(
            tokens
                .create_token(req(
                    secret,
                    pb::CreateTokenRequest {
                        name: format!("made-by-{who}"),
                        role: pb::Role::Reader as i32,
                        node: String::new(),
                    },
                ))
                .await,
        ),
        Rpc::ListTokens => code(
            tokens
                .list_tokens(req(secret, pb::ListTokensRequest {}))
                .await,
        ),
        Rpc::RevokeToken => code(
            tokens
                .revoke_token(req(
                    secret,
                    pb::RevokeTokenRequest {
                        name: "victim".into(),
                    },
                ))
                .await,
        ),
        Rpc::Sync => {
            let (tx, rx) = tokio::sync::mpsc::channel(4);
            tx.send(hello("a")).await.unwrap();
            let result = agents
                .sync(req(secret, tokio_stream::wrappers::ReceiverStream::new(rx)))
                .await;
            match result {
                Err(status) => status.code(),
                // Accepted: the first push must arrive.
                Ok(response) => {
                    let mut inbound = response.into_inner();
                    code(inbound.message().await.map(|m| m.expect("a first push")))
                }
            }
        }
        Rpc::Register => code(agents.register(req(secret, register("a", "reg-a"))).await),
        Rpc::Deregister => code(
            agents
                .deregister(req(
                    secret,
                    pb::DeregisterRequest {
                        node_id: "a".into(),
                        endpoints: vec!["not-there".into()],
                        mode: pb::DeregisterMode::Delete as i32,
                    },
                ))
                .await,
        ),
        Rpc::Health => code(
            tonic_health::pb::health_client::HealthClient::new(channel.clone())
                .check(req(secret, tonic_health::pb::HealthCheckRequest::default()))
                .await,
        ),
        Rpc::Reflection => {
            use tonic_reflection::pb::v1::ServerReflectionRequest;
            use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
            use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
            let request = ServerReflectionRequest {
                host: String::new(),
                message_request: Some(MessageRequest::ListServices(String::new())),
            };
            match ServerReflectionClient::new(channel.clone())
                .server_reflection_info(req(secret, tokio_stream::iter([request])))
                .await
            {
                Err(status) => status.code(),
                Ok(response) => code(response.into_inner().message().await),
            }
        }
    }
}

fn hello(node: &str) -> pb::SyncRequest {
    pb::SyncRequest {
        message: Some(pb::sync_request::Message::Hello(pb::Hello {
            node_id: node.into(),
            agent_version: "test".into(),
            ..Default::default()
        })),
    }
}

fn register(node: &str, endpoint_name: &str) -> pb::RegisterRequest {
    pb::RegisterRequest {
        node_id: node.into(),
        endpoints: vec![pb::Endpoint {
            node: node.into(),
            ..endpoint(endpoint_name, "web", 9000)
        }],
        services: vec![],
        replace: false,
    }
}

/// Every RPC × {none, reader, admin, agent of node a, revoked}: the codes
/// the README's table promises.
async fn every_rpc_answers_each_principal_as_its_role_allows(db: TestDb) {
    use Code::{Ok as OK, PermissionDenied as DENIED, Unauthenticated as UNAUTH};
    let dir = TempDir::new();
    let (server, admin) = start(&db, dir.path()).await;
    let channel = channel(&server).await;
    let reader = create_token(&channel, &admin, "reader", pb::Role::Reader, "").await;
    let agent_a = create_token(&channel, &admin, "agent-a", pb::Role::Agent, "a").await;
    let revoked = create_token(&channel, &admin, "gone", pb::Role::Admin, "").await;
    create_token(&channel, &admin, "victim", pb::Role::Reader, "").await;
    OperatorServiceClient::new(channel.clone())
        .apply(req(
            &admin,
            pb::ApplyRequest {
                items: vec![item(service("web")), item(service("spare"))],
                dry_run: false,
            },
        ))
        .await
        .unwrap();
    TokenServiceClient::new(channel.clone())
        .revoke_token(req(
            &admin,
            pb::RevokeTokenRequest {
                name: "gone".into(),
            },
        ))
        .await
        .unwrap();

    //            Apply   Delete  Get     List    Watch   Nodes   Create  ListT   Revoke  Sync    Reg     Dereg   Health Reflect
    let table: [(&str, &str, [Code; 14]); 5] = [
        (
            "none",
            "",
            [
                UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH,
                UNAUTH, UNAUTH, OK, UNAUTH,
            ],
        ),
        (
            "reader",
            &reader,
            [
                DENIED, DENIED, OK, OK, OK, OK, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, OK,
                OK,
            ],
        ),
        (
            "admin",
            &admin,
            [
                OK, OK, OK, OK, OK, OK, OK, OK, OK, DENIED, DENIED, DENIED, OK, OK,
            ],
        ),
        (
            "agent-a",
            &agent_a,
            [
                DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, DENIED, OK, OK, OK,
                OK, OK,
            ],
        ),
        (
            "revoked",
            &revoked,
            [
                UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH, UNAUTH,
                UNAUTH, UNAUTH, OK, UNAUTH,
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (who, secret, expected) in &table {
        for (rpc, want) in RPCS.iter().zip(expected) {
            let got = call(&channel, *rpc, secret, who).await;
            if got != *want {
                wrong.push(format!("{who} {rpc:?}: got {got:?}, want {want:?}"));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));

    // Only the admin's CreateToken made a token.
    let names: Vec<String> = TokenServiceClient::new(channel.clone())
        .list_tokens(req(&admin, pb::ListTokensRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| t.name)
        .filter(|n| n.starts_with("made-by-"))
        .collect();
    assert_eq!(names, ["made-by-admin"]);
    server.stop().await;
}

/// An agent token for node `a` cannot speak for node `b`: Hello, Register,
/// Deregister and health reports are refused, and nothing is written.
async fn an_agent_speaks_only_for_its_own_node(db: TestDb) {
    let dir = TempDir::new();
    let (server, admin) = start(&db, dir.path()).await;
    let channel = channel(&server).await;
    let agent_a = create_token(&channel, &admin, "agent-a", pb::Role::Agent, "a").await;
    let mut op = OperatorServiceClient::new(channel.clone());
    let owned_by_b = pb::Endpoint {
        node: "b".into(),
        ..endpoint("web-b", "web", 9001)
    };
    let before = op
        .apply(req(
            &admin,
            pb::ApplyRequest {
                items: vec![
                    item(service("web")),
                    item(pb::resource::Kind::Endpoint(owned_by_b)),
                ],
                dry_run: false,
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut agents = AgentServiceClient::new(channel.clone());

    // Hello as b.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("b")).await.unwrap();
    let status = agents
        .sync(req(
            &agent_a,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("token/agent-a"), "{status:?}");

    // Register and Deregister as b.
    let status = agents
        .register(req(&agent_a, register("b", "sneaky")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");
    let status = agents
        .deregister(req(
            &agent_a,
            pb::DeregisterRequest {
                node_id: "b".into(),
                endpoints: vec!["web-b".into()],
                mode: pb::DeregisterMode::Delete as i32,
            },
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    // A health report for b's endpoint on a's own stream ends the stream.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(hello("a")).await.unwrap();
    let mut inbound = agents
        .sync(req(
            &agent_a,
            tokio_stream::wrappers::ReceiverStream::new(rx),
        ))
        .await
        .unwrap()
        .into_inner();
    inbound.message().await.unwrap().expect("first push");
    tx.send(pb::SyncRequest {
        message: Some(pb::sync_request::Message::Health(pb::HealthReport {
            endpoints: vec![pb::EndpointHealth {
                endpoint: "web-b".into(),
                health: pb::Health::Unhealthy as i32,
                reason: "forged".into(),
                observed_at: None,
            }],
        })),
    })
    .await
    .unwrap();
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(5), inbound.message()).await {
            Ok(Ok(Some(_))) => continue,
            Ok(other) => break other,
            Err(_) => panic!("the stream was not ended"),
        }
    };
    assert_eq!(ended.unwrap_err().code(), Code::PermissionDenied);

    // Nothing was written: same revision, b's endpoint untouched, no node b.
    let list = op
        .list(req(
            &admin,
            pb::ListRequest {
                kind: pb::Kind::Endpoint as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(list.revision, before);
    assert_eq!(list.resources.len(), 1);
    let Some(pb::resource::Kind::Endpoint(e)) = &list.resources[0].kind else {
        panic!("{list:?}");
    };
    assert_eq!(
        (e.name.as_str(), e.health),
        ("web-b", pb::Health::Unknown as i32)
    );
    let nodes = op
        .list_nodes(req(&admin, pb::ListNodesRequest::default()))
        .await
        .unwrap()
        .into_inner()
        .nodes;
    assert!(nodes.iter().all(|n| n.id != "b"), "{nodes:?}");
    server.stop().await;
}

/// A token revoked through one replica is refused by another replica on
/// the same Postgres within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_reaches_every_replica_within_a_second() {
    let db = TestDb::postgres().await;
    let dir = TempDir::new();
    let (first, admin) = start(&db, dir.path()).await;
    let second = TestServer::start_with(
        db.url(),
        switchyard_control_plane::server::Config {
            auth: auth::Config {
                enforce: true,
                ..auth::Config::default()
            },
            ..TestServer::config()
        },
    )
    .await;
    let one = channel(&first).await;
    let two = channel(&second).await;
    let ci = create_token(&one, &admin, "ci", pb::Role::Reader, "").await;
    let list = |channel: Channel, secret: String| async move {
        OperatorServiceClient::new(channel)
            .list(req(
                &secret,
                pb::ListRequest {
                    kind: pb::Kind::Service as i32,
                    ..Default::default()
                },
            ))
            .await
            .map(|_| ())
            .map_err(|s| s.code())
    };
    // The other replica learns of the new token too.
    let deadline = Instant::now() + Duration::from_secs(5);
    while list(two.clone(), ci.clone()).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "the second replica never took the token"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    TokenServiceClient::new(one.clone())
        .revoke_token(req(&admin, pb::RevokeTokenRequest { name: "ci".into() }))
        .await
        .unwrap();
    let revoked = Instant::now();
    // The replica that revoked it refuses it at once.
    assert_eq!(
        list(one.clone(), ci.clone()).await,
        Err(Code::Unauthenticated)
    );
    loop {
        match list(two.clone(), ci.clone()).await {
            Err(Code::Unauthenticated) => break,
            Ok(()) => {}
            Err(other) => panic!("unexpected {other:?}"),
        }
        assert!(
            revoked.elapsed() < Duration::from_secs(1),
            "the second replica still accepts the revoked token after {:?}",
            revoked.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "revocation reached the second replica after {:?}",
        revoked.elapsed()
    );
    first.stop().await;
    second.stop().await;
}

fn auth_on(bootstrap: Option<std::path::PathBuf>) -> switchyard_control_plane::server::Config {
    switchyard_control_plane::server::Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        auth: auth::Config {
            enforce: true,
            ..auth::Config::default()
        },
        bootstrap_token_file: bootstrap,
        ..TestServer::config()
    }
}

/// Starts a server that should refuse to start, and returns its error.
async fn refused(db: &TestDb, config: switchyard_control_plane::server::Config) -> String {
    let config = switchyard_control_plane::server::Config {
        database_url: db.url().into(),
        ..config
    };
    let result = tokio::time::timeout(
        Duration::from_secs(10),
        switchyard_control_plane::server::run(config, tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("a refusal comes at once");
    result
        .expect_err("the server must refuse to start")
        .to_string()
}

async fn token_names(server: &TestServer, admin: &str) -> Vec<String> {
    TokenServiceClient::new(channel(server).await)
        .list_tokens(req(admin, pb::ListTokensRequest {}))
        .await
        .unwrap()
        .into_inner()
        .tokens
        .into_iter()
        .map(|t| t.name)
        .collect()
}

/// Bootstrap as decided: one admin token on an empty store, written to a
/// new file readable by its owner only; never over an existing file; a
/// no-op once tokens exist; and without it, authentication with no token
/// refuses to start.
async fn bootstrap_creates_one_admin_once(db: TestDb) {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = TempDir::new();

    let error = refused(&db, auth_on(None)).await;
    assert!(error.contains("--bootstrap-token-file"), "{error}");

    let taken = dir.path().join("taken");
    std::fs::write(&taken, "keep me\n").unwrap();
    let error = refused(&db, auth_on(Some(taken.clone()))).await;
    assert!(
        error.contains("--bootstrap-token-file") && error.contains("exists"),
        "{error}"
    );
    assert_eq!(std::fs::read_to_string(&taken).unwrap(), "keep me\n");

    let (server, admin) = start(&db, dir.path()).await;
    let file = dir.path().join("admin.token");
    let mode = std::fs::metadata(&file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(token_names(&server, &admin).await, ["bootstrap-admin"]);
    server.stop().await;

    // Started again with the same flag: nothing changes, the old secret works.
    let again = TestServer::start_with(db.url(), auth_on(Some(file.clone()))).await;
    let other = dir.path().join("other.token");
    let third = TestServer::start_with(db.url(), auth_on(Some(other.clone()))).await;
    assert_eq!(token_names(&again, &admin).await, ["bootstrap-admin"]);
    assert_eq!(token_names(&third, &admin).await, ["bootstrap-admin"]);
    assert_eq!(std::fs::read_to_string(&file).unwrap().trim(), admin);
    assert!(!other.exists(), "no second secret is written");
    again.stop().await;
    third.stop().await;
}

/// Two replicas starting together on one empty Postgres create exactly one
/// admin token between them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_starting_together_bootstrap_one_token() {
    let db = TestDb::postgres().await;
    let dir = TempDir::new();
    let files: Vec<_> = (0..4)
        .map(|i| dir.path().join(format!("admin-{i}.token")))
        .collect();
    let servers = futures::future::join_all(
        files
            .iter()
            .map(|f| TestServer::start_with(db.url(), auth_on(Some(f.clone())))),
    )
    .await;
    // Every replica serves; exactly one wrote a secret.
    let deadline = Instant::now() + Duration::from_secs(10);
    let written = loop {
        let written: Vec<_> = files.iter().filter(|f| f.exists()).collect();
        if !written.is_empty() || Instant::now() > deadline {
            break written;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(written.len(), 1, "{written:?}");
    let admin = read_secret(written[0]).await;
    for server in &servers {
        assert_eq!(token_names(server, &admin).await, ["bootstrap-admin"]);
    }
    for server in servers {
        server.stop().await;
    }
    let still: Vec<_> = files.iter().filter(|f| f.exists()).collect();
    assert_eq!(still.len(), 1, "{still:?}");
}

/// Past the per-connection and per-principal limits, a Watch is refused
/// with RESOURCE_EXHAUSTED naming the limit; a stream that ends frees its
/// place.
async fn streams_are_limited_per_connection_and_per_principal(db: TestDb) {
    let dir = TempDir::new();
    let file = dir.path().join("admin.token");
    let server = TestServer::start_with(
        db.url(),
        switchyard_control_plane::server::Config {
            auth: auth::Config {
                enforce: true,
                max_streams_per_connection: 2,
                max_streams_per_principal: 3,
            },
            bootstrap_token_file: Some(file.clone()),
            ..TestServer::config()
        },
    )
    .await;
    let admin = read_secret(&file).await;
    let watch = |channel: Channel| {
        let admin = admin.clone();
        async move {
            OperatorServiceClient::new(channel)
                .watch(req(&admin, pb::WatchRequest::default()))
                .await
                .map(tonic::Response::into_inner)
        }
    };
    let a = channel(&server).await;
    let b = channel(&server).await;
    let _a1 = watch(a.clone()).await.unwrap();
    let a2 = watch(a.clone()).await.unwrap();
    let refused = watch(a.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-streams-per-connection"),
        "{refused:?}"
    );
    let _b1 = watch(b.clone()).await.unwrap();
    let refused = watch(b.clone()).await.unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    assert!(
        refused.message().contains("--max-streams-per-principal"),
        "{refused:?}"
    );
    // A unary call is not a stream: it still goes through.
    OperatorServiceClient::new(b.clone())
        .list(req(
            &admin,
            pb::ListRequest {
                kind: pb::Kind::Service as i32,
                ..Default::default()
            },
        ))
        .await
        .unwrap();
    // Ending a stream frees its place, on its connection and for its principal.
    drop(a2);
    let deadline = Instant::now() + Duration::from_secs(5);
    let _b2 = loop {
        match watch(b.clone()).await {
            Ok(stream) => break stream,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted);
                assert!(
                    Instant::now() < deadline,
                    "the ended stream never freed its place"
                );
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    server.stop().await;
}

/// With authentication off every caller is `anonymous`; the per-principal
/// limit must not cap them all together (a fleet of more agents than the
/// limit would be refused), only each connection is bounded.
async fn anonymous_streams_are_bounded_per_connection_only(db: TestDb) {
    let server = TestServer::start_with(
        db.url(),
        switchyard_control_plane::server::Config {
            auth: auth::Config {
                enforce: false,
                max_streams_per_connection: 2,
                max_streams_per_principal: 2,
            },
            ..TestServer::config()
        },
    )
    .await;
    let watch = |channel: Channel| async move {
        OperatorServiceClient::new(channel)
            .watch(pb::WatchRequest::default())
            .await
            .map(tonic::Response::into_inner)
    };
    let mut open = Vec::new();
    for _ in 0..3 {
        let connection = channel(&server).await;
        open.push(watch(connection.clone()).await.unwrap());
        open.push(watch(connection.clone()).await.unwrap());
        let refused = watch(connection).await.unwrap_err();
        assert_eq!(refused.code(), Code::ResourceExhausted);
        assert!(
            refused.message().contains("--max-streams-per-connection"),
            "{refused:?}"
        );
    }
    assert_eq!(open.len(), 6);
    server.stop().await;
}

switchyard_control_plane::both_backends!(
    anonymous_streams_are_bounded_per_connection_only,
    every_rpc_answers_each_principal_as_its_role_allows,
    an_agent_speaks_only_for_its_own_node,
    bootstrap_creates_one_admin_once,
    streams_are_limited_per_connection_and_per_principal,
);

/// `switchyard-cp` itself refuses to serve beyond loopback without TLS and
/// authentication, or a plaintext metrics port, unless an --insecure-* flag
/// says so — naming the flag, in one line.
#[tokio::test]
async fn the_binary_refuses_insecure_exposure_naming_the_flag() {
    let dir = TempDir::new();
    let db = format!("sqlite://{}", dir.path().join("cp.db").display());
    let cases: [(&[&str], &str); 3] = [
        (&["--listen", "0.0.0.0:0"], "--insecure-plaintext"),
        (
            &[
                "--listen",
                "0.0.0.0:0",
                "--insecure-plaintext",
                "--auth",
                "off",
            ],
            "--insecure-no-auth",
        ),
        (
            &["--listen", "127.0.0.1:0", "--metrics-listen", "0.0.0.0:0"],
            "--insecure-metrics",
        ),
    ];
    for (args, flag) in cases {
        let output = tokio::process::Command::new(switchyard_control_plane::testing::cp_binary())
            .args(args)
            .args(["--database-url", &db])
            .kill_on_drop(true)
            .output();
        let output = tokio::time::timeout(Duration::from_secs(20), output)
            .await
            .expect("refused at once")
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} started");
        assert!(stderr.contains(flag), "{args:?}: {stderr}");
    }
}
