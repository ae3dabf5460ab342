//! End to end, health closes the loop: a real control plane, real agents
//! (one owning and checking the backends, one a client-side sidecar running
//! the built-in proxy), and real backend processes (Python's
//! `http.server`), all on loopback. A backend dies: its agent's checks see
//! it, the control plane writes it, and the sidecar's proxy stops sending it
//! traffic; it comes back and rejoins.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard::resource::Health;
use switchyard_agent::NodeConfig;
use switchyard_control_plane::testing::fixtures::{self, item};
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use switchyard_proxy::Builtin;
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

/// Python's `http.server` serving a directory, except that each answer
/// goes out in one write (a buffered `wfile`, flushed after each request)
/// where the stock handler writes the head and the body apart. A backend
/// killed at a random moment then dies before an answer or after it,
/// never between its head and its body: the first a proxy can retry
/// elsewhere; the second, no proxy can hide from its client once the head
/// has been passed on.
const SERVER: &str = r#"
import functools, http.server, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    wbufsize = -1

port, directory = int(sys.argv[1]), sys.argv[2]
handler = functools.partial(Handler, directory=directory)
http.server.ThreadingHTTPServer(("127.0.0.1", port), handler).serve_forever()
"#;

/// A backend server process answering `GET /` with its name.
struct Backend {
    name: &'static str,
    port: u16,
    dir: TempDir,
    child: Option<Child>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        let dir = TempDir::new();
        std::fs::write(dir.path().join("index.html"), name).unwrap();
        let mut backend = Backend {
            name,
            port: free_port(),
            dir,
            child: None,
        };
        backend.restart().await;
        backend
    }

    /// Starts the process (again) on the same port; returns once it answers.
    async fn restart(&mut self) {
        let child = Command::new("python3")
            .args(["-c", SERVER, &self.port.to_string()])
            .arg(self.dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("python3 runs the test backends");
        self.child = Some(child);
        let started = Instant::now();
        while fetch(self.port).await.as_deref() != Some(self.name) {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "backend {} never answered",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as a crash would.
    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }
}

/// Service `web` health-checked over HTTP every 200 ms (fall 2, rise 2),
/// its endpoints owned by node `backends`, and a route with retries behind
/// a loopback listener that only `role=client` nodes open.
fn checked_web(backends: &[&Backend], listen: u16) -> Vec<pb::ApplyItem> {
    let millis = |ms: i32| {
        Some(prost_types::Duration {
            seconds: 0,
            nanos: ms * 1_000_000,
        })
    };
    let service = pb::Service {
        name: "web".into(),
        health_check: Some(pb::HealthCheck {
            interval: millis(200),
            timeout: millis(150),
            healthy_threshold: 2,
            unhealthy_threshold: 2,
            check: Some(pb::health_check::Check::Http(pb::HttpHealthCheck {
                path: "/".into(),
                ..Default::default()
            })),
        }),
        ..Default::default()
    };
    let route = pb::Route {
        name: "web".into(),
        rules: vec![pb::RouteRule {
            matches: vec![],
            action: Some(pb::RouteAction {
                destinations: vec![pb::WeightedDestination {
                    service: "web".into(),
                    weight: 1,
                    ..Default::default()
                }],
                retry: Some(pb::RetryPolicy {
                    attempts: 2,
                    retry_on: vec![
                        pb::RetryOn::ConnectFailure as i32,
                        pb::RetryOn::Reset as i32,
                        pb::RetryOn::GatewayError as i32,
                    ],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }],
        ..Default::default()
    };
    let listener = pb::Listener {
        node_selector: BTreeMap::from([("role".into(), "client".into())]),
        ..fixtures::listener("front", "127.0.0.1", u32::from(listen), "web")
    };
    let mut items = vec![item(pb::resource::Kind::Service(service))];
    for b in backends {
        items.push(endpoint(b.name, "web", u32::from(b.port), "backends"));
    }
    items.push(item(pb::resource::Kind::Route(route)));
    items.push(item(pb::resource::Kind::Listener(listener)));
    items
}

fn health_of(c: &NodeConfig, endpoint: &str) -> Option<Health> {
    c.endpoints.get(endpoint).map(|e| e.health)
}

/// An agent whose heartbeats keep it well inside a short node lease.
/// Who last changed endpoint `name`: principal and address.
async fn changed_by(server: &TestServer, name: &str) -> (String, String) {
    let got = server
        .client()
        .await
        .get(pb::GetRequest {
            r#ref: Some(pb::ResourceRef {
                kind: pb::Kind::Endpoint as i32,
                name: name.into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    let author = got.resource.and_then(|r| r.last_change).expect("an author");
    (author.principal, author.address)
}

async fn agent(node: &str, role: &str, url: &str) -> TestAgent {
    let dir = Arc::new(TempDir::new());
    TestAgent::start_with(
        switchyard_agent::Config {
            node_id: node.into(),
            labels: BTreeMap::from([("role".to_string(), role.to_string())]),
            control_planes: vec![url.to_owned()],
            data_dir: dir.path().to_path_buf(),
            backoff_base: Duration::from_millis(20),
            backoff_max: Duration::from_millis(200),
            heartbeat_interval: Duration::from_millis(200),
            ..Default::default()
        },
        dir,
    )
    .await
}

/// Requests through the sidecar, one after another, until stopped.
struct Load {
    ok: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Vec<(Instant, String)>>,
}

impl Load {
    fn start(port: u16) -> Load {
        let (ok, errors, stop) = Default::default();
        let task = tokio::spawn({
            let (ok, errors, stop): (Arc<AtomicU64>, Arc<AtomicU64>, Arc<AtomicBool>) =
                (Arc::clone(&ok), Arc::clone(&errors), Arc::clone(&stop));
            async move {
                let mut answers = vec![];
                while !stop.load(Ordering::Relaxed) {
                    match get(port, "/").await {
                        Some((200, body)) => {
                            ok.fetch_add(1, Ordering::Relaxed);
                            answers.push((Instant::now(), body));
                        }
                        other => {
                            eprintln!("request failed: {other:?}");
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                answers
            }
        });
        Load {
            ok,
            errors,
            stop,
            task,
        }
    }

    /// Waits until `n` requests have succeeded in all.
    async fn until_ok(&self, n: u64) {
        let started = Instant::now();
        while self.ok.load(Ordering::Relaxed) < n {
            assert!(
                started.elapsed() < Duration::from_secs(15),
                "the client's requests stalled"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn finish(self) -> (u64, u64, Vec<(Instant, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        let answers = self.task.await.unwrap();
        (
            self.ok.load(Ordering::Relaxed),
            self.errors.load(Ordering::Relaxed),
            answers,
        )
    }
}

/// Tests 1 and 2: a killed backend is out of every proxy within a second
/// (200 ms checks, fall 2), and back once it returns; a client sending
/// idempotent requests through the sidecar meanwhile sees no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_leaves_and_rejoins_without_client_errors() {
    let mut backends = [
        Backend::start("web-1").await,
        Backend::start("web-2").await,
        Backend::start("web-3").await,
    ];
    let listen = free_port();
    let db = TestDb::postgres().await;
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    apply(
        &url,
        checked_web(&backends.iter().collect::<Vec<_>>(), listen),
    )
    .await;

    let owner = agent("backends", "backend", &url).await;
    let sidecar = agent("client-1", "client", &url).await;
    let all_healthy = |c: &NodeConfig| {
        ["web-1", "web-2", "web-3"]
            .iter()
            .all(|e| health_of(c, e) == Some(Health::Healthy))
    };
    sidecar.until("every backend healthy", all_healthy).await;
    assert!(
        owner.agent.health().borrow().len() == 3,
        "the owner checks all three"
    );
    assert!(
        sidecar.agent.health().borrow().is_empty(),
        "the sidecar checks none"
    );
    let stop = CancellationToken::new();
    let proxy = tokio::spawn(Builtin::new().run(sidecar.agent.config(), stop.clone()));
    until_body(listen, "web-1").await;

    let load = Load::start(listen);
    load.until_ok(20).await;
    backends[1].kill().await;
    let killed = Instant::now();
    let excluded = sidecar
        .until("web-2 unhealthy at the sidecar", |c| {
            health_of(c, "web-2") == Some(Health::Unhealthy)
        })
        .await;
    // After that, the proxy sends web-2 nothing (a request answered by it
    // would have to come from its dead process): let traffic flow a while.
    load.until_ok(load.ok.load(Ordering::Relaxed) + 30).await;
    backends[1].restart().await;
    let restarted = Instant::now();
    let rejoined = sidecar
        .until("web-2 healthy again", |c| {
            health_of(c, "web-2") == Some(Health::Healthy)
        })
        .await;
    let seen_again = until_body(listen, "web-2").await;
    let (ok, errors, answers) = load.finish().await;

    eprintln!(
        "kill -> excluded at the sidecar: {excluded:?}; restart -> rejoined: {rejoined:?} \
         (traffic after {seen_again:?}); {ok} requests, {errors} errors"
    );
    // Nominal: up to 2 checks (<= 2 x 220 ms with jitter) + one health
    // write (at once after a quiet spell, else within 100 ms) + one push.
    // The bound leaves room for a loaded machine.
    assert!(excluded < Duration::from_millis(2500), "{excluded:?}");
    assert!(rejoined < Duration::from_millis(2500), "{rejoined:?}");
    assert_eq!(errors, 0, "retries hide the dead backend from the client");
    assert!(ok > 50, "the client kept sending: {ok}");
    let during_outage = answers
        .iter()
        .filter(|(at, body)| *at > killed + excluded && *at < restarted && body == "web-2")
        .count();
    assert_eq!(during_outage, 0, "no answer from web-2 while it was dead");
    for name in ["web-1", "web-3"] {
        assert!(
            answers.iter().any(|(_, b)| b == name),
            "{name} served traffic"
        );
    }

    stop.cancel();
    proxy.await.unwrap();
    owner.agent.stop().await.unwrap();
    sidecar.agent.stop().await.unwrap();
    server.stop().await;
}

/// Test 3: the owning agent stops; once the node's lease runs out, its
/// endpoints show `unknown` and traffic to them continues. When it comes
/// back, its reports take over again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_node_endpoints_become_unknown_and_keep_serving() {
    let backend = Backend::start("web-1").await;
    let listen = free_port();
    let db = TestDb::sqlite();
    let lease = Duration::from_secs(1);
    let config = switchyard_control_plane::server::Config {
        node_lease: lease,
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    let url = server.url();
    apply(&url, checked_web(&[&backend], listen)).await;
    let owner = agent("backends", "backend", &url).await;
    let sidecar = agent("client-1", "client", &url).await;
    sidecar
        .until("web-1 healthy", |c| {
            health_of(c, "web-1") == Some(Health::Healthy)
        })
        .await;
    let stop = CancellationToken::new();
    let proxy = tokio::spawn(Builtin::new().run(sidecar.agent.config(), stop.clone()));
    until_body(listen, "web-1").await;
    // The health came from the owner's agent, over its own connection.
    let (principal, address) = changed_by(&server, "web-1").await;
    assert_eq!(principal, "node/backends");
    assert!(address.starts_with("127.0.0.1:"), "{address}");

    owner.agent.stop().await.unwrap();
    let stopped = Instant::now();
    sidecar
        .until("web-1 unknown", |c| {
            health_of(c, "web-1") == Some(Health::Unknown)
        })
        .await;
    let after = stopped.elapsed();
    let e = stored_endpoint(&server, "web-1").await.unwrap();
    eprintln!(
        "agent stopped -> endpoint unknown after {after:?} (lease {lease:?}): {}",
        e.health_reason
    );
    assert!(after >= lease, "not before the lease ran out: {after:?}");
    assert!(e.health_reason.contains("lease"), "{e:?}");
    assert!(e.health_changed_at.is_some());
    // No node said so: the control plane did, on its own authority.
    assert_eq!(
        changed_by(&server, "web-1").await,
        ("control-plane".to_string(), String::new())
    );
    // Static stability: unknown is still routable.
    for _ in 0..20 {
        assert_eq!(fetch(listen).await.as_deref(), Some("web-1"));
    }

    let owner = agent("backends", "backend", &url).await;
    sidecar
        .until("web-1 healthy again", |c| {
            health_of(c, "web-1") == Some(Health::Healthy)
        })
        .await;
    stop.cancel();
    proxy.await.unwrap();
    owner.agent.stop().await.unwrap();
    sidecar.agent.stop().await.unwrap();
    server.stop().await;
}

/// Registration from the node: an agent declares its node's instance in a
/// file; it is registered (its service created), checked and reported
/// healthy; a clean stop drains it, so the sidecar sends it nothing; the
/// next start registers it again and traffic returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_instance_is_checked_drained_on_stop_and_back_on_start() {
    let backend = Backend::start("api-1").await;
    let listen = free_port();
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let file = format!(
        "on_shutdown = \"drain\"\n\
         [[service]]\nservice = \"api\"\nname = \"api-1\"\naddress = \"127.0.0.1\"\nport = {}\n\
         create = {{ protocol = \"http\" }}\n\
         health_check = {{ http = {{ path = \"/\" }}, interval = \"200ms\", timeout = \"150ms\" }}\n",
        backend.port
    );
    let registration = switchyard_agent::registration::parse(&file, "backends").unwrap();
    let front = pb::Listener {
        node_selector: BTreeMap::from([("role".into(), "client".into())]),
        target: Some(pb::listener::Target::Service("api".into())),
        protocol: pb::Protocol::Tcp as i32,
        ..fixtures::listener("front", "127.0.0.1", u32::from(listen), "")
    };
    let start_owner = || {
        let registration = registration.clone();
        let url = url.clone();
        async move {
            let dir = Arc::new(TempDir::new());
            TestAgent::start_with(
                switchyard_agent::Config {
                    node_id: "backends".into(),
                    control_planes: vec![url],
                    data_dir: dir.path().to_path_buf(),
                    registration: Some(registration),
                    backoff_base: Duration::from_millis(20),
                    ..Default::default()
                },
                dir,
            )
            .await
        }
    };
    let owner = start_owner().await;
    // The listener names the service the agent creates: applied once it exists.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut client = server.client().await;
    while client
        .apply(pb::ApplyRequest {
            items: vec![item(pb::resource::Kind::Listener(front.clone()))],
            dry_run: false,
        })
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "service api never registered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let sidecar = agent("client-1", "client", &url).await;
    sidecar
        .until("api-1 healthy", |c| {
            health_of(c, "api-1") == Some(Health::Healthy)
        })
        .await;
    let stop = CancellationToken::new();
    let proxy = tokio::spawn(Builtin::new().run(sidecar.agent.config(), stop.clone()));
    until_body(listen, "api-1").await;

    owner.agent.stop().await.unwrap();
    sidecar
        .until("api-1 draining", |c| {
            health_of(c, "api-1") == Some(Health::Draining)
        })
        .await;
    // Draining: once the proxy has taken the configuration the agent
    // published, no new connection reaches it (the backend itself still
    // runs): the proxy closes the client's connection instead.
    let started = Instant::now();
    while fetch(listen).await.as_deref() == Some("api-1") {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "still served while draining"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for _ in 0..10 {
        let answer = fetch(listen).await;
        assert!(answer.as_deref().is_none_or(str::is_empty), "{answer:?}");
    }

    let owner = start_owner().await;
    sidecar
        .until("api-1 healthy again", |c| {
            health_of(c, "api-1") == Some(Health::Healthy)
        })
        .await;
    until_body(listen, "api-1").await;
    stop.cancel();
    proxy.await.unwrap();
    owner.agent.stop().await.unwrap();
    sidecar.agent.stop().await.unwrap();
    server.stop().await;
}
