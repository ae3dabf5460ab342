//! End to end, `/metrics` tells the truth: a real control plane and a real
//! agent with the built-in proxy, both scraped over HTTP and parsed
//! strictly as Prometheus text, while configuration changes, proxied
//! requests and failing backends make their numbers move.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchyard::metrics::{Scrape, parse};
use switchyard::pb;
use switchyard_agent::driver::{self, Driver};
use switchyard_agent::metrics::{self, Sources};
use switchyard_control_plane::testing::fixtures::{self, item};
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer, scrape};
use switchyard_proxy::Builtin;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

/// Scrapes `addr` and parses the answer strictly.
async fn scrape_at(addr: SocketAddr) -> Scrape {
    let text = scrape(addr).await;
    parse(&text).unwrap_or_else(|e| panic!("{addr} serves invalid metrics: {e}\n{text}"))
}

/// Scrapes `addr` until `done` holds (at most 15 s).
async fn until(addr: SocketAddr, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let scrape = scrape_at(addr).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(
            Instant::now() < deadline,
            "the metrics at {addr} never showed {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The value of one series, 0 when it is absent.
fn value(s: &Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    s.get(name, labels).unwrap_or(0.0)
}

/// An agent with the built-in proxy and its metrics endpoint, as
/// `switchyard-agent` runs them.
struct Node {
    agent: TestAgent,
    metrics: SocketAddr,
    stop: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
}

impl Node {
    async fn start(id: &str, control_plane: &str) -> Node {
        let dir = Arc::new(TempDir::new());
        let stop = CancellationToken::new();
        let (builtin, proxy) = driver::Builtin::new(Builtin::new(), stop.clone());
        let driver: Arc<dyn Driver> = Arc::new(builtin);
        let agent = TestAgent::start_with(
            switchyard_agent::Config {
                node_id: id.into(),
                labels: [("role".to_string(), "edge".to_string())].into(),
                control_planes: vec![control_plane.to_string()],
                data_dir: dir.path().to_path_buf(),
                backoff_base: Duration::from_millis(20),
                backoff_max: Duration::from_millis(200),
                driver: Some(driver.clone()),
                ..Default::default()
            },
            dir,
        )
        .await;
        let sources = Sources::new(&agent.agent, Some(driver));
        let ready = agent.agent.readiness();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = listener.local_addr().unwrap();
        let tasks = vec![
            tokio::spawn(proxy),
            tokio::spawn(metrics::serve(
                listener,
                move || sources.render(),
                ready,
                stop.clone(),
            )),
        ];
        Node {
            agent,
            metrics,
            stop,
            tasks,
        }
    }

    async fn scrape(&self) -> Scrape {
        scrape_at(self.metrics).await
    }

    async fn stop(self) {
        self.stop.cancel();
        for task in self.tasks {
            task.await.unwrap();
        }
        self.agent.agent.stop().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_and_requests_move_both_daemons_numbers() {
    let db = TestDb::sqlite();
    let cp = TestServer::start(db.url()).await;
    let (backend_port, backend) = one_line_backend("hello").await;
    let listen = free_port();
    let node = Node::start("edge-1", &cp.url()).await;
    let replica = cp.addr.to_string();
    let replica = [("replica", replica.as_str())];
    let cp_url = cp.url();
    let connected = [("control_plane", cp_url.as_str())];
    let acks = "switchyard_cp_acks_total";

    let rev1 = apply(&cp.url(), proxied_web(backend_port, listen)).await;
    node.agent.until("rev1", |c| c.revision == rev1).await;
    let a = node.scrape().await;
    assert_eq!(
        a.get("switchyard_agent_applied_revision", &[]),
        Some(rev1 as f64)
    );
    assert_eq!(a.get("switchyard_agent_connected", &connected), Some(1.0));
    assert!(value(&a, "switchyard_agent_sync_acks_total", &[]) >= 1.0);
    assert_eq!(a.get("switchyard_agent_sync_nacks_total", &[]), Some(0.0));
    let c = until(cp.metrics_addr, "the node's ack", |s| {
        value(s, acks, &[]) >= 1.0
            && value(s, "switchyard_cp_state_revision", &replica) == rev1 as f64
    })
    .await;
    assert_eq!(c.get("switchyard_cp_agents_connected", &[]), Some(1.0));
    assert!(c.sum("switchyard_cp_pushes_total", &[]) >= 1.0);
    assert!(value(&c, "switchyard_cp_push_bytes_total", &[]) > 0.0);
    assert_eq!(c.get("switchyard_cp_nacks_total", &[]), Some(0.0));

    // A change in the node's scope: one more delta, acked, and its
    // propagation timed.
    let deltas = value(&c, "switchyard_cp_pushes_total", &[("kind", "delta")]);
    let acked = value(&c, acks, &[]);
    let timed = value(&c, "switchyard_cp_propagation_seconds_count", &[]);
    let labelled = pb::resource::Kind::Service(pb::Service {
        name: "web".into(),
        labels: [("tier".to_string(), "front".to_string())].into(),
        ..Default::default()
    });
    let rev2 = apply(&cp.url(), vec![item(labelled)]).await;
    node.agent.until("rev2", |c| c.revision == rev2).await;
    let c = until(cp.metrics_addr, "the second ack", |s| {
        value(s, acks, &[]) > acked
    })
    .await;
    assert!(value(&c, "switchyard_cp_pushes_total", &[("kind", "delta")]) > deltas);
    assert!(
        value(&c, "switchyard_cp_propagation_seconds_count", &[]) > timed,
        "the ack of a change is timed"
    );
    assert_eq!(
        c.get("switchyard_cp_store_revision", &replica),
        Some(rev2 as f64)
    );
    assert_eq!(
        c.get("switchyard_cp_state_revision", &replica),
        Some(rev2 as f64)
    );
    assert_eq!(
        c.get(
            "switchyard_cp_api_requests_total",
            &[("method", "Apply"), ("code", "OK")]
        ),
        Some(2.0)
    );
    assert_eq!(
        c.get(
            "switchyard_cp_store_duration_seconds_count",
            &[("op", "apply")]
        ),
        Some(2.0)
    );
    let a = node.scrape().await;
    assert_eq!(
        a.get("switchyard_agent_applied_revision", &[]),
        Some(rev2 as f64)
    );

    // Requests: the listener's and the endpoint's counters move by exactly
    // the number sent.
    until_body(listen, "hello").await;
    let before = node.scrape().await;
    const N: usize = 25;
    for _ in 0..N {
        assert_eq!(fetch(listen).await.as_deref(), Some("hello"));
    }
    let after = node.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let front = [("listener", "front")];
    assert_eq!(
        moved(
            "switchyard_agent_proxy_requests_total",
            &[("listener", "front"), ("class", "2xx")]
        ),
        N as f64
    );
    assert_eq!(
        moved(
            "switchyard_agent_proxy_upstream_requests_total",
            &[("service", "web"), ("endpoint", "web-1"), ("class", "2xx")]
        ),
        N as f64
    );
    assert_eq!(
        moved(
            "switchyard_agent_proxy_request_duration_seconds_count",
            &front
        ),
        N as f64
    );
    assert_eq!(
        moved("switchyard_agent_proxy_connections_total", &front),
        N as f64
    );
    assert_eq!(
        after.sum("switchyard_agent_proxy_errors_total", &front),
        0.0
    );

    node.stop().await;
    let c = until(cp.metrics_addr, "the node gone", |s| {
        s.get("switchyard_cp_agents_connected", &[]) == Some(0.0)
    })
    .await;
    assert!(value(&c, acks, &[]) >= 2.0);
    cp.stop().await;
    backend.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_backends_show_in_health_and_proxy_metrics() {
    let db = TestDb::postgres().await;
    let cp = TestServer::start(db.url()).await;
    let (backend_port, backend) = one_line_backend("hello").await;
    let dead_port = free_port();
    let listen = free_port();
    let node = Node::start("edge-1", &cp.url()).await;

    // Service `web`: checked over TCP by node edge-1, which owns both
    // endpoints; one of them has nothing listening. Outlier detection
    // ejects an endpoint at its first connect failure; the route retries
    // connect failures elsewhere and answers only under /api.
    let web = pb::Service {
        name: "web".into(),
        health_check: Some(pb::HealthCheck {
            interval: Some(prost_types::Duration::try_from(Duration::from_millis(100)).unwrap()),
            timeout: Some(prost_types::Duration::try_from(Duration::from_millis(100)).unwrap()),
            healthy_threshold: 1,
            unhealthy_threshold: 1,
            check: Some(pb::health_check::Check::Tcp(pb::TcpHealthCheck {})),
        }),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_connect_failures: 1,
            base_ejection_time: Some(
                prost_types::Duration::try_from(Duration::from_secs(60)).unwrap(),
            ),
            max_ejection_percent: 50,
            ..Default::default()
        }),
        // Keeps routing to an endpoint reported unhealthy, so that the
        // proxy meets the dead one and outlier detection has work.
        panic_threshold_percent: Some(100),
        ..Default::default()
    };
    let route = pb::Route {
        name: "web".into(),
        rules: vec![pb::RouteRule {
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Prefix("/api".into())),
                }),
                ..Default::default()
            }],
            action: Some(pb::RouteAction {
                destinations: vec![pb::WeightedDestination {
                    service: "web".into(),
                    weight: 1,
                    ..Default::default()
                }],
                retry: Some(pb::RetryPolicy {
                    attempts: 2,
                    retry_on: vec![pb::RetryOn::ConnectFailure as i32],
                    ..Default::default()
                }),
                ..Default::default()
            }),
        }],
        ..Default::default()
    };
    let front = fixtures::listener("front", "127.0.0.1", u32::from(listen), "web");
    let rev = apply(
        &cp.url(),
        vec![
            item(pb::resource::Kind::Service(web)),
            endpoint("live", "web", u32::from(backend_port), "edge-1"),
            endpoint("dead", "web", u32::from(dead_port), "edge-1"),
            item(pb::resource::Kind::Route(route)),
            item(pb::resource::Kind::Listener(front)),
        ],
    )
    .await;
    node.agent
        .until("the configuration", |c| c.revision >= rev)
        .await;

    // Health: the node's checks conclude, count, and reach the control plane.
    let a = until(node.metrics, "both endpoints checked", |s| {
        s.get("switchyard_agent_endpoint_healthy", &[("endpoint", "dead")]) == Some(0.0)
            && s.get("switchyard_agent_endpoint_healthy", &[("endpoint", "live")]) == Some(1.0)
    })
    .await;
    let dead = [("endpoint", "dead")];
    let live = [("endpoint", "live")];
    assert!(value(&a, "switchyard_agent_health_check_failures_total", &dead) >= 1.0);
    assert_eq!(
        a.get("switchyard_agent_health_check_failures_total", &live),
        Some(0.0)
    );
    assert!(value(&a, "switchyard_agent_health_checks_total", &live) >= 1.0);
    let c = until(cp.metrics_addr, "both health changes committed", |s| {
        value(s, "switchyard_cp_health_changes_total", &[]) >= 2.0
    })
    .await;
    assert!(value(&c, "switchyard_cp_health_reports_total", &[]) >= 2.0);
    assert!(value(&c, "switchyard_cp_health_commits_total", &[]) >= 1.0);
    assert!(
        value(
            &c,
            "switchyard_cp_store_duration_seconds_count",
            &[("op", "write_health")]
        ) >= 1.0
    );

    // Requests: every one answered by `live`; the dead endpoint costs a
    // connect failure, an ejection and a retry; outside /api, a 404.
    until_body_at(listen, "/api", "hello").await;
    let before = node.scrape().await;
    const N: usize = 10;
    for _ in 0..N {
        assert_eq!(get(listen, "/api").await, Some((200, "hello".to_string())));
    }
    assert_eq!(get(listen, "/elsewhere").await.map(|r| r.0), Some(404));
    let after = node.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let class = |c| [("listener", "front"), ("class", c)];
    assert_eq!(
        moved("switchyard_agent_proxy_requests_total", &class("2xx")),
        N as f64
    );
    assert_eq!(
        moved("switchyard_agent_proxy_requests_total", &class("4xx")),
        1.0
    );
    assert_eq!(
        moved(
            "switchyard_agent_proxy_errors_total",
            &[("listener", "front"), ("reason", "no_route")]
        ),
        1.0
    );
    let web_dead = [("service", "web"), ("endpoint", "dead")];
    assert!(
        value(&after, "switchyard_agent_proxy_ejections_total", &web_dead) >= 1.0,
        "the dead endpoint was ejected"
    );
    assert!(
        value(
            &after,
            "switchyard_agent_proxy_upstream_failures_total",
            &[
                ("service", "web"),
                ("endpoint", "dead"),
                ("reason", "connect_error")
            ]
        ) >= 1.0
    );
    assert!(
        value(
            &after,
            "switchyard_agent_proxy_retries_total",
            &[("service", "web")]
        ) >= 1.0
    );
    assert_eq!(
        value(
            &after,
            "switchyard_agent_proxy_circuit_open_total",
            &[("service", "web")]
        ),
        0.0
    );
    // The keep-alive connections to the backend stay open, counted.
    assert!(
        value(
            &after,
            "switchyard_agent_proxy_upstream_connections",
            &[("service", "web")]
        ) >= 1.0
    );

    node.stop().await;
    cp.stop().await;
    backend.abort();
}

/// Waits (at most 15 s) until `path` through the proxy on `port` answers `want`.
async fn until_body_at(port: u16, path: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        if let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            let request = format!("GET {path} HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n");
            let mut out = String::new();
            if s.write_all(request.as_bytes()).await.is_ok()
                && s.read_to_string(&mut out).await.is_ok()
                && out.ends_with(want)
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{path} never answered {want}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
