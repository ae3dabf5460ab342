//! `nodes` and `rollout status` against real agents.

use std::collections::BTreeMap;
use std::time::Duration;

use switchyard_agent::Agent;
use switchyard_control_plane::both_backends;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, write, yardctl, yardctl_stdin};

both_backends!(
    nodes_show_the_health_of_the_endpoints_each_node_checks,
    rollout_completes_once_every_node_has_applied,
    rollout_times_out_while_a_node_is_behind,
    rollout_fails_fast_when_a_node_refuses,
);

/// A service whose two endpoints node-1 owns (so they are in its scope);
/// `port` tells one version of it from the next.
fn owned(port: u16) -> String {
    format!(
        "kind: Service\nname: db\n---\n\
         kind: Endpoint\nname: db-1\nspec: {{service: db, address: 10.9.0.1, port: {port}, node: node-1}}\n---\n\
         kind: Endpoint\nname: db-2\nspec: {{service: db, address: 10.9.0.2, port: 5432, node: node-1}}\n"
    )
}

/// An agent for `node-1`, labelled role=db.
struct TestAgent {
    agent: Agent,
    _dir: TempDir,
}

impl TestAgent {
    async fn start(server: &TestServer) -> TestAgent {
        let dir = TempDir::new();
        let config = switchyard_agent::Config {
            node_id: "node-1".into(),
            labels: BTreeMap::from([("role".to_string(), "db".to_string())]),
            control_planes: vec![server.url()],
            data_dir: dir.path().to_path_buf(),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            ..Default::default()
        };
        let agent = Agent::start(config, CancellationToken::new())
            .await
            .expect("start agent");
        TestAgent { agent, _dir: dir }
    }
}

/// Waits until `yardctl nodes` lists node-1 with `connected` (yes or no).
async fn node_listed(server: &TestServer, connected: &str) -> Vec<String> {
    eventually(
        &format!("node-1 listed, connected: {connected}"),
        || async {
            let run = yardctl(server, &["nodes"]).await;
            let row = run.lines().into_iter().find(|l| l.starts_with("node-1 "))?;
            let cells: Vec<String> = row
                .split("   ")
                .map(|c| c.trim().to_string())
                .filter(|c| !c.is_empty())
                .collect();
            (cells[1] == connected).then_some(cells)
        },
    )
    .await
}

/// With one agent: waits for it, reports progress, and completes; with a
/// selector that picks no node, completes at once.
async fn rollout_completes_once_every_node_has_applied(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    yardctl(
        &server,
        &["apply", "-f", &write(tmp.path(), "v1.yaml", &owned(5432))],
    )
    .await
    .ok();
    let agent = TestAgent::start(&server).await;
    node_listed(&server, "yes").await;

    yardctl(
        &server,
        &["apply", "-f", &write(tmp.path(), "v2.yaml", &owned(6432))],
    )
    .await
    .ok();
    let run = yardctl(&server, &["rollout", "status", "--timeout", "20s"]).await;
    let lines = run.lines();
    assert_eq!(
        lines.last(),
        Some(&"rollout of revision 2 complete"),
        "{run:?}"
    );
    assert!(lines.contains(&"1/1 nodes at revision 2"), "{run:?}");

    // The node's row: connected, current, and the endpoints it checks.
    let cells = node_listed(&server, "yes").await;
    assert_eq!(cells[3], "2", "applied revision: {cells:?}");
    assert_eq!(
        cells[5], "2 unknown",
        "owned endpoints by health: {cells:?}"
    );
    assert_eq!(cells[6], "-", "no refusal: {cells:?}");

    let json = yardctl(&server, &["nodes", "-o", "json"]).await;
    let nodes: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(nodes[0]["id"], "node-1");
    assert_eq!(nodes[0]["connected"], true);
    assert_eq!(nodes[0]["labels"]["role"], "db");
    assert_eq!(nodes[0]["appliedRevision"], 2);
    assert_eq!(nodes[0]["endpoints"]["unknown"], 2);

    let none = yardctl(&server, &["rollout", "status", "-l", "role=web"]).await;
    assert_eq!(
        none.ok(),
        "0/0 nodes at revision 2\nrollout of revision 2 complete\n"
    );
    agent.agent.stop().await.unwrap();
}

/// A node that is gone never reaches the new revision: exit 4 after the
/// timeout, naming it; an older revision it has is still reported done.
async fn rollout_times_out_while_a_node_is_behind(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    yardctl(
        &server,
        &["apply", "-f", &write(tmp.path(), "v1.yaml", &owned(5432))],
    )
    .await
    .ok();
    let agent = TestAgent::start(&server).await;
    node_listed(&server, "yes").await;
    yardctl(&server, &["rollout", "status", "--timeout", "20s"])
        .await
        .ok();
    agent.agent.stop().await.unwrap();
    node_listed(&server, "no").await;

    yardctl(
        &server,
        &["apply", "-f", &write(tmp.path(), "v2.yaml", &owned(6432))],
    )
    .await
    .ok();
    let started = std::time::Instant::now();
    let run = yardctl(&server, &["rollout", "status", "--timeout", "1s"]).await;
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the timeout out"
    );
    assert_eq!(
        run.failed(4),
        "error: timed out after 1s waiting for revision 2: 0/1 nodes at it; \
         behind: node-1 (at revision 1, disconnected)"
    );
    assert_eq!(run.stdout, "0/1 nodes at revision 2\n");

    let older = yardctl(&server, &["rollout", "status", "--revision", "1"]).await;
    assert_eq!(
        older.ok(),
        "1/1 nodes at revision 1\nrollout of revision 1 complete\n"
    );
}

/// Two listeners on one port: the agent refuses the configuration, and
/// rollout status says so at once (exit 2) instead of waiting it out.
async fn rollout_fails_fast_when_a_node_refuses(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    yardctl(
        &server,
        &["apply", "-f", &write(tmp.path(), "v1.yaml", &owned(5432))],
    )
    .await
    .ok();
    let agent = TestAgent::start(&server).await;
    node_listed(&server, "yes").await;
    yardctl(&server, &["rollout", "status", "--timeout", "20s"])
        .await
        .ok();

    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let clash = format!(
        "kind: Route\nname: db\nspec: {{rules: [{{action: {{destinations: [{{service: db}}]}}}}]}}\n---\n\
         kind: Listener\nname: a\nspec: {{address: 127.0.0.1, port: {port}, route: db, nodeSelector: {{role: db}}}}\n---\n\
         kind: Listener\nname: b\nspec: {{address: 127.0.0.1, port: {port}, route: db, nodeSelector: {{role: db}}}}\n"
    );
    yardctl(
        &server,
        &["apply", "-f", &write(tmp.path(), "clash.yaml", &clash)],
    )
    .await
    .ok();
    let started = std::time::Instant::now();
    let run = yardctl(&server, &["rollout", "status", "--timeout", "20s"]).await;
    let line = run.failed(2);
    assert!(
        line.starts_with("error: node node-1 refused revision 2: "),
        "{line}"
    );
    assert!(line.ends_with("(it still serves revision 1)"), "{line}");
    assert!(line.contains("overlaps listener"), "{line}");
    assert!(started.elapsed() < Duration::from_secs(15), "failed fast");

    let cells = node_listed(&server, "yes").await;
    assert!(
        cells[6].starts_with("revision 2"),
        "last nack shown: {cells:?}"
    );
    agent.agent.stop().await.unwrap();
}

/// The agent checks the two endpoints it owns, one up and one down: `nodes`
/// counts them by health, `get` shows each one's health and why, and the
/// printed manifests still apply back unchanged.
async fn nodes_show_the_health_of_the_endpoints_each_node_checks(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    // The kernel completes TCP handshakes on a listening socket, which is
    // all a TCP check asks; the other port has nothing behind it.
    let up = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let down = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let checked = format!(
        "kind: Service\nname: db\nspec: {{healthCheck: {{interval: 100ms, timeout: 50ms, tcp: {{}}}}}}\n---\n\
         kind: Endpoint\nname: db-up\nspec: {{service: db, address: 127.0.0.1, port: {}, node: node-1}}\n---\n\
         kind: Endpoint\nname: db-down\nspec: {{service: db, address: 127.0.0.1, port: {down}, node: node-1}}\n",
        up.local_addr().unwrap().port()
    );
    let tmp = TempDir::new();
    yardctl(
        &server,
        &["apply", "-f", &write(tmp.path(), "db.yaml", &checked)],
    )
    .await
    .ok();
    let agent = TestAgent::start(&server).await;

    eventually("node-1 reports one endpoint up and one down", || async {
        let cells = node_listed(&server, "yes").await;
        (cells[5] == "1 healthy, 1 unhealthy").then_some(())
    })
    .await;
    let eps = yardctl(&server, &["get", "ep"]).await;
    let health: Vec<(&str, &str)> = eps.lines()[1..]
        .iter()
        .map(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            (cells[0], cells[6])
        })
        .collect();
    assert_eq!(health, [("db-down", "unhealthy"), ("db-up", "healthy")]);
    let yaml = yardctl(&server, &["get", "ep", "db-down", "-o", "yaml"]).await;
    assert!(
        yaml.ok()
            .contains("status:\n  health: unhealthy\n  changedAt: "),
        "{yaml:?}"
    );
    assert!(yaml.stdout.contains("  reason: "), "{yaml:?}");

    let back = yardctl_stdin(&server, &["apply", "-f", "-"], &yaml.stdout).await;
    assert_eq!(back.ok(), "endpoint/db-down unchanged\n");
    agent.agent.stop().await.unwrap();
}
