//! End to end: real control planes (in-process and as processes), real
//! agents, real Postgres / SQLite, everything over loopback sockets.

use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard_agent::NodeConfig;
use switchyard_control_plane::testing::fixtures::{self, item, route_to, service};
use switchyard_control_plane::testing::{CpProcess, TempDir, TestDb, TestServer};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

fn listener(name: &str, port: u32, selector: &[(&str, &str)]) -> pb::ApplyItem {
    item(pb::resource::Kind::Listener(pb::Listener {
        node_selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..fixtures::listener(name, "0.0.0.0", port, "web")
    }))
}

/// Edge nodes (role=edge) open a listener in front of `web`; `db` is a
/// service no listener reaches, with an endpoint owned by node `db-1`.
fn fleet_config() -> Vec<pb::ApplyItem> {
    vec![
        item(service("web")),
        item(service("db")),
        endpoint("web-1", "web", 8081, ""),
        endpoint("web-2", "web", 8082, ""),
        endpoint("db-1", "db", 5432, "db-1"),
        item(route_to("web", "web")),
        listener("edge", 18080, &[("role", "edge")]),
    ]
}

fn port_of(c: &NodeConfig, endpoint: &str) -> Option<u16> {
    c.endpoints.get(endpoint).map(|e| e.port)
}

/// Test 1: a write reaches every agent in scope; agents out of scope
/// receive nothing at all.
async fn write_reaches_exactly_the_agents_in_scope(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let first = apply(&server.url(), fleet_config()).await;
    let mut agents = vec![];
    for (node, role) in [("edge-1", "edge"), ("edge-2", "edge"), ("db-1", "db")] {
        let a = TestAgent::start(node, role, vec![server.url()], Arc::new(TempDir::new())).await;
        a.until("initial sync", |c| c.revision >= first).await;
        agents.push(a);
    }
    let edge = agents[0].config();
    assert_eq!(edge.listeners.keys().collect::<Vec<_>>(), ["edge"]);
    assert_eq!(
        edge.endpoints.keys().collect::<Vec<_>>(),
        ["web-1", "web-2"]
    );
    let db_view = agents[2].config();
    assert!(
        db_view.listeners.is_empty(),
        "db-1 is not selected by the edge listener"
    );
    assert_eq!(
        db_view.endpoints.keys().collect::<Vec<_>>(),
        ["db-1"],
        "db-1 holds the endpoint it checks"
    );
    let db_pushes = agents[2].counter("snapshots") + agents[2].counter("deltas");

    let started = Instant::now();
    apply(&server.url(), vec![endpoint("web-1", "web", 9091, "")]).await;
    for a in &agents[..2] {
        a.until("web-1 moved to 9091", |c| port_of(c, "web-1") == Some(9091))
            .await;
    }
    let propagation = started.elapsed();
    // Give a stray push every chance to arrive before counting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        agents[2].counter("snapshots") + agents[2].counter("deltas"),
        db_pushes,
        "out of scope: nothing sent"
    );
    assert!(port_of(&agents[2].config(), "web-1").is_none());
    eprintln!("write -> 2 agents in scope: {propagation:?}");
    for a in agents {
        a.agent.stop().await.unwrap();
    }
    server.stop().await;
}

/// Test 2: two replicas on one Postgres; a write through A reaches an agent
/// connected to B.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_through_one_replica_reaches_an_agent_on_another() {
    let db = TestDb::postgres().await;
    let a = TestServer::start(db.url()).await;
    let b = TestServer::start(db.url()).await;
    let first = apply(&a.url(), fleet_config()).await;
    let agent = TestAgent::start("edge-1", "edge", vec![b.url()], Arc::new(TempDir::new())).await;
    agent.until("initial sync", |c| c.revision >= first).await;
    let mut samples = vec![];
    for port in 9000..9010 {
        let started = Instant::now();
        apply(&a.url(), vec![endpoint("web-2", "web", port, "")]).await;
        agent
            .until("change through the other replica", |c| {
                port_of(c, "web-2") == Some(port as u16)
            })
            .await;
        samples.push(started.elapsed());
    }
    samples.sort();
    eprintln!(
        "cross-replica propagation: median {:?}, max {:?}",
        samples[5], samples[9]
    );
    // Polling alone would take up to 500 ms; NOTIFY makes it immediate.
    assert!(
        samples[5] < Duration::from_millis(400),
        "median {:?}",
        samples[5]
    );
    agent.agent.stop().await.unwrap();
    a.stop().await;
    b.stop().await;
}

/// Test 3: kill -9 the replica an agent is connected to: it fails over to
/// the other and resumes with a Delta, not a Snapshot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_resumes_with_a_delta() {
    let db = TestDb::postgres().await;
    let a = CpProcess::start(db.url(), "127.0.0.1:0".parse().unwrap(), &[]).await;
    let b = CpProcess::start(db.url(), "127.0.0.1:0".parse().unwrap(), &[]).await;
    let first = apply(&a.url(), fleet_config()).await;
    let agent = TestAgent::start(
        "edge-1",
        "edge",
        vec![a.url(), b.url()],
        Arc::new(TempDir::new()),
    )
    .await;
    agent.until("initial sync", |c| c.revision >= first).await;
    assert_eq!(agent.agent.stats().connected_to(), Some(a.url()));
    assert_eq!(agent.counter("snapshots"), 1);

    let b_url = b.url();
    a.kill().await;
    let changed = apply(&b_url, vec![endpoint("web-1", "web", 7001, "")]).await;
    let took = agent
        .until("change after fail-over", |c| {
            c.revision >= changed && port_of(c, "web-1") == Some(7001)
        })
        .await;
    eprintln!("fail-over and catch-up: {took:?}");
    assert_eq!(agent.agent.stats().connected_to(), Some(b_url));
    assert_eq!(
        agent.counter("snapshots"),
        1,
        "resumed with a delta, not a snapshot"
    );
    assert!(agent.counter("deltas") >= 1);
    agent.agent.stop().await.unwrap();
}

/// Test 4: an agent restarted while every control plane is down serves its
/// persisted configuration; when a replica returns, it catches up.
async fn restart_while_control_planes_are_down(db: TestDb) {
    let cp = CpProcess::start(db.url(), "127.0.0.1:0".parse().unwrap(), &[]).await;
    let addr = cp.addr;
    let first = apply(&cp.url(), fleet_config()).await;
    let dir = Arc::new(TempDir::new());
    let agent = TestAgent::start("edge-1", "edge", vec![cp.url()], dir.clone()).await;
    agent.until("initial sync", |c| c.revision >= first).await;
    let before = agent.config();
    agent.agent.stop().await.unwrap();
    cp.kill().await;

    // Every control plane is down; the store takes a write meanwhile.
    let store = db.store().await;
    let parsed = switchyard::resource::Resource::from_pb(
        endpoint("web-2", "web", 7002, "")
            .resource
            .as_ref()
            .unwrap(),
        "e",
    )
    .unwrap();
    let write = switchyard_control_plane::store::Write {
        target: parsed.reference(),
        refs: parsed.references(),
        field: "e".into(),
        resource: endpoint("web-2", "web", 7002, "").resource.unwrap(),
        expected_revision: None,
    };
    use switchyard_control_plane::store::{Author, Store};
    let changed = store
        .apply(vec![write], false, &Author::new("anonymous", ""))
        .await
        .unwrap()
        .revision;
    store.close().await;

    let agent = TestAgent::start("edge-1", "edge", vec![format!("http://{addr}")], dir).await;
    let served = agent.config();
    assert_eq!(
        served.revision, before.revision,
        "serves the persisted configuration at once"
    );
    assert_eq!(served.listeners.keys().collect::<Vec<_>>(), ["edge"]);
    assert_eq!(port_of(&served, "web-2"), Some(8082));

    let _cp = CpProcess::start(db.url(), addr, &[]).await;
    agent
        .until("catch-up after the control plane returns", |c| {
            c.revision >= changed && port_of(c, "web-2") == Some(7002)
        })
        .await;
    assert_eq!(agent.counter("snapshots"), 0, "caught up with a delta");
    agent.agent.stop().await.unwrap();
}

/// Test 6: a configuration a node cannot take (two listeners on one port)
/// is Nacked; its previous configuration stays live; the Nack shows in
/// ListNodes; other nodes are unaffected.
async fn invalid_configuration_is_nacked_and_previous_stays(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let first = apply(&server.url(), fleet_config()).await;
    let edge = TestAgent::start(
        "edge-1",
        "edge",
        vec![server.url()],
        Arc::new(TempDir::new()),
    )
    .await;
    let other = TestAgent::start(
        "edge-2",
        "canary",
        vec![server.url()],
        Arc::new(TempDir::new()),
    )
    .await;
    edge.until("initial sync", |c| c.revision >= first).await;
    other.until("initial sync", |c| c.revision >= first).await;
    let before = edge.config();

    // A second listener on the edge listener's port, for every edge node,
    // plus a change the canary node does take.
    let bad = apply(
        &server.url(),
        vec![
            listener("clash", 18080, &[("role", "edge")]),
            listener("canary", 18081, &[("role", "canary")]),
        ],
    )
    .await;
    other
        .until("canary listener", |c| c.listeners.contains_key("canary"))
        .await;
    let mut client = server.client().await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let node = loop {
        let nodes = client
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner()
            .nodes;
        if let Some(n) = nodes
            .into_iter()
            .find(|n| n.id == "edge-1" && n.last_nack.is_some())
        {
            break n;
        }
        assert!(Instant::now() < deadline, "no nack recorded");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let nack = node.last_nack.unwrap();
    assert_eq!(nack.revision, bad);
    assert!(
        nack.error.contains("clash") && nack.error.contains("edge") && nack.error.contains("18080"),
        "{}",
        nack.error
    );
    assert_eq!(edge.counter("nacks"), 1);
    let live = edge.config();
    assert!(
        Arc::ptr_eq(&live, &before),
        "the previous configuration stays live"
    );
    assert!(!live.listeners.contains_key("clash"));

    // Removing the clash lets the node move on.
    client
        .delete(pb::DeleteRequest {
            items: vec![pb::DeleteItem {
                r#ref: Some(pb::ResourceRef {
                    kind: pb::Kind::Listener as i32,
                    name: "clash".into(),
                }),
                expected_revision: None,
            }],
            dry_run: false,
        })
        .await
        .unwrap();
    let fixed = apply(&server.url(), vec![endpoint("web-1", "web", 6001, "")]).await;
    edge.until("fixed configuration", |c| c.revision >= fixed)
        .await;
    assert_eq!(
        edge.counter("nacks"),
        1,
        "the refused configuration was not pushed again"
    );
    edge.agent.stop().await.unwrap();
    other.agent.stop().await.unwrap();
    server.stop().await;
}

switchyard_control_plane::both_backends!(
    write_reaches_exactly_the_agents_in_scope,
    restart_while_control_planes_are_down,
    invalid_configuration_is_nacked_and_previous_stays,
);

/// The whole loop: an operator's write through the control plane changes
/// where the node's proxy sends traffic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_write_moves_proxied_traffic() {
    use switchyard_proxy::Builtin;

    let (blue, _b) = one_line_backend("blue").await;
    let (green, _g) = one_line_backend("green").await;
    let listen = free_port();

    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let first = apply(&server.url(), proxied_web(blue, listen)).await;
    let agent = TestAgent::start(
        "edge-1",
        "edge",
        vec![server.url()],
        Arc::new(TempDir::new()),
    )
    .await;
    agent.until("initial sync", |c| c.revision >= first).await;
    let stop = CancellationToken::new();
    let proxy = tokio::spawn(Builtin::new().run(agent.agent.config(), stop.clone()));

    until_body(listen, "blue").await;
    let started = Instant::now();
    apply(
        &server.url(),
        vec![endpoint("web-1", "web", u32::from(green), "")],
    )
    .await;
    until_body(listen, "green").await;
    eprintln!(
        "operator write -> proxied traffic moved: {:?}",
        started.elapsed()
    );
    stop.cancel();
    proxy.await.unwrap();
    agent.agent.stop().await.unwrap();
    server.stop().await;
}

/// A listener the node cannot bind (its port is taken) is refused: the
/// agent Nacks the configuration with the reason, the control plane shows
/// it, and the node keeps serving the previous one. Once the port is free,
/// the next change goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_that_cannot_bind_is_refused_and_the_previous_configuration_stays() {
    use switchyard_agent::driver;
    use switchyard_proxy::Builtin;

    let (backend, _b) = one_line_backend("hello").await;
    let listen = free_port();
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let first = apply(&server.url(), proxied_web(backend, listen)).await;
    let stop = CancellationToken::new();
    let (builtin, proxy) = driver::Builtin::new(Builtin::new(), stop.clone());
    let dir = Arc::new(TempDir::new());
    let agent = TestAgent::start_with(
        switchyard_agent::Config {
            node_id: "edge-1".into(),
            control_planes: vec![server.url()],
            data_dir: dir.path().to_path_buf(),
            backoff_base: Duration::from_millis(20),
            driver: Some(Arc::new(builtin)),
            ..Default::default()
        },
        dir,
    )
    .await;
    agent.until("initial sync", |c| c.revision >= first).await;
    let proxy = tokio::spawn(proxy);
    until_body(listen, "hello").await;

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = u32::from(taken.local_addr().unwrap().port());
    let blocked = fixtures::listener("blocked", "127.0.0.1", port, "web");
    let refused = apply(
        &server.url(),
        vec![item(pb::resource::Kind::Listener(blocked.clone()))],
    )
    .await;
    let mut client = server.client().await;
    let started = Instant::now();
    let nack = loop {
        let nodes = client
            .list_nodes(pb::ListNodesRequest::default())
            .await
            .unwrap()
            .into_inner();
        if let Some(nack) = nodes.nodes.iter().find_map(|n| n.last_nack.clone()) {
            break nack;
        }
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no nack recorded"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(nack.revision, refused);
    assert!(
        nack.error.contains("listener/blocked") && nack.error.contains("cannot bind"),
        "{}",
        nack.error
    );
    assert_eq!(
        agent.config().revision,
        first,
        "the previous configuration stays"
    );
    assert_eq!(fetch(listen).await.as_deref(), Some("hello"));

    drop(taken);
    let accepted = apply(
        &server.url(),
        vec![item(pb::resource::Kind::Listener(pb::Listener {
            labels: [("retry".to_string(), "1".to_string())].into(),
            ..blocked
        }))],
    )
    .await;
    agent
        .until("the next change", |c| c.revision >= accepted)
        .await;
    until_body(port as u16, "hello").await;
    stop.cancel();
    proxy.await.unwrap();
    agent.agent.stop().await.unwrap();
    server.stop().await;
}

/// The `switchyard-agent` binary as operators run it: it syncs from a real
/// `switchyard-cp`, serves traffic through its built-in proxy, stops cleanly
/// on SIGTERM, and `--dump` shows what it saved.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binary_syncs_proxies_and_dumps() {
    let (backend_port, backend_task) = one_line_backend("hello").await;
    let listen = free_port();
    let db = TestDb::sqlite();
    let cp = CpProcess::start(db.url(), "127.0.0.1:0".parse().unwrap(), &[]).await;
    let revision = apply(&cp.url(), proxied_web(backend_port, listen)).await;

    let bin = switchyard_control_plane::testing::cp_binary().with_file_name("switchyard-agent");
    let dir = TempDir::new();
    let data_dir = dir.path().to_str().unwrap().to_string();
    let mut agent = tokio::process::Command::new(&bin)
        .args([
            "--node-id",
            "edge-1",
            "--label",
            "role=edge",
            "--control-plane",
            &cp.url(),
            "--data-dir",
            &data_dir,
            "--metrics-listen",
            "127.0.0.1:0",
            "--api-listen",
            "127.0.0.1:0",
            "--dns-listen",
            "127.0.0.1:0",
        ])
        .env("SWITCHYARD_LOG_FORMAT", "json")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard-agent");

    // Traffic flows once the agent has synced and opened the listener.
    until_body(listen, "hello").await;

    let pid = agent.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let exit = tokio::time::timeout(Duration::from_secs(20), agent.wait())
        .await
        .expect("agent stopped in time")
        .unwrap();
    assert!(exit.success(), "{exit:?}");

    let dump = tokio::process::Command::new(&bin)
        .args(["--dump", "--data-dir", &data_dir])
        .output()
        .await
        .unwrap();
    assert!(dump.status.success());
    let text = String::from_utf8(dump.stdout).unwrap();
    assert!(
        text.starts_with(&format!("revision {revision}\n")),
        "{text}"
    );
    assert!(text.contains("listener/front revision"), "{text}");
    backend_task.abort();
}
