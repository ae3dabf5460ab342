//! End to end: one listener routing ten thousand virtual hosts, from an
//! operator's Apply through a real control plane (SQLite and Postgres) and
//! agent to the built-in proxy and backends on their own 127.x addresses.

use std::net::Ipv4Addr;
use std::sync::Arc;

use prost::Message;
use switchyard::pb;
use switchyard_control_plane::testing::fixtures::{self, item, service};
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use switchyard_proxy::Builtin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

/// Host rules on the listener: `h0.example.com` … `h9998.example.com`, then
/// `*.example.com`.
const RULES: usize = 10_000;
/// Services `s0` … `s9`; host `h<i>` goes to `s<i mod 10>`.
const SERVICES: usize = 10;

/// The address of service `s<i>`'s backend; the wildcard's is the one after.
fn backend_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(i).unwrap())
}

/// A keep-alive HTTP/1.1 backend on `ip` that answers every request with
/// its own address, so a response tells which backend the proxy chose.
async fn backend_on(ip: Ipv4Addr) -> (u16, tokio::task::JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
    let port = l.local_addr().unwrap().port();
    let body = ip.to_string();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let body = body.clone();
            conns.spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let resp = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, task)
}

/// One GET of `/` with `Host: host` through the proxy on `port`: status and
/// body, or `None` if the connection failed.
async fn get_host(port: u16, host: &str) -> Option<(u16, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET / HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
    s.write_all(request.as_bytes()).await.ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).await.ok()?;
    let status = out.split(' ').nth(1)?.parse().ok()?;
    Some((status, out.rsplit("\r\n\r\n").next()?.to_owned()))
}

fn rule(host: String, service: String) -> pb::RouteRule {
    pb::RouteRule {
        matches: vec![pb::RouteMatch {
            host,
            ..Default::default()
        }],
        action: Some(pb::RouteAction {
            destinations: vec![pb::WeightedDestination {
                service,
                weight: 1,
                ..Default::default()
            }],
            ..Default::default()
        }),
    }
}

/// The route: exact hosts in order, the wildcard last.
fn hosts_route() -> pb::Route {
    let mut rules: Vec<_> = (0..RULES - 1)
        .map(|i| rule(format!("h{i}.example.com"), format!("s{}", i % SERVICES)))
        .collect();
    rules.push(rule("*.example.com".into(), "wild".into()));
    pb::Route {
        name: "hosts".into(),
        rules,
        ..Default::default()
    }
}

/// Ten thousand host rules on one listener are accepted in one Apply, reach
/// the agent, and route each host to its backend: the first, middle and
/// last exact hosts, any case and port, the wildcard, and a 404 for a host
/// no rule names.
async fn ten_thousand_hosts_on_one_listener(db: TestDb) {
    let mut ports = Vec::new();
    let mut backends = Vec::new();
    for i in 0..=SERVICES {
        let (port, task) = backend_on(backend_ip(i)).await;
        ports.push(port);
        backends.push(task);
    }
    let listen = free_port();
    let route = hosts_route();
    let mut items: Vec<_> = (0..=SERVICES)
        .flat_map(|i| {
            let name = if i == SERVICES {
                "wild".to_string()
            } else {
                format!("s{i}")
            };
            let endpoint = pb::Endpoint {
                address: backend_ip(i).to_string(),
                ..fixtures::endpoint(&format!("{name}-1"), &name, u32::from(ports[i]))
            };
            [
                item(service(&name)),
                item(pb::resource::Kind::Endpoint(endpoint)),
            ]
        })
        .collect();
    let bytes = route.encoded_len();
    eprintln!(
        "route of {RULES} host rules: {bytes} bytes encoded, {:.1} per rule",
        bytes as f64 / RULES as f64
    );
    items.push(item(pb::resource::Kind::Route(route)));
    items.push(item(pb::resource::Kind::Listener(fixtures::listener(
        "front",
        "127.0.0.1",
        u32::from(listen),
        "hosts",
    ))));

    let server = TestServer::start(db.url()).await;
    let revision = apply(&server.url(), items).await;
    let agent = TestAgent::start(
        "gateway-1",
        "gateway",
        vec![server.url()],
        Arc::new(TempDir::new()),
    )
    .await;
    agent
        .until("the route of every host", |c| {
            c.revision >= revision
                && c.routes
                    .get("hosts")
                    .is_some_and(|r| r.rules.len() == RULES)
        })
        .await;
    let stop = CancellationToken::new();
    let proxy = tokio::spawn(Builtin::new().run(agent.agent.config(), stop.clone()));

    let ip = |i: usize| backend_ip(i).to_string();
    let cases = [
        ("h0.example.com", Some(ip(0))),
        ("h4999.example.com", Some(ip(4999 % SERVICES))),
        ("h9998.example.com", Some(ip(9998 % SERVICES))),
        ("H1234.Example.COM:8080", Some(ip(1234 % SERVICES))),
        ("anything.example.com", Some(ip(SERVICES))),
        ("h12.h3.example.com", Some(ip(SERVICES))),
        ("example.com", None),
        ("h3.example.org", None),
    ];
    // The listener opens once the agent's configuration reaches the proxy.
    let started = std::time::Instant::now();
    while get_host(listen, "h0.example.com").await.is_none() {
        assert!(
            started.elapsed().as_secs() < 15,
            "the listener never opened"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    for (host, want) in cases {
        let got = get_host(listen, host).await.expect("an answer");
        match want {
            Some(body) => assert_eq!(got, (200, body), "{host}"),
            None => assert_eq!(got.0, 404, "{host}: {got:?}"),
        }
    }
    // A spread of hosts, each to its service's backend.
    for i in (0..RULES - 1).step_by(997) {
        let got = get_host(listen, &format!("h{i}.example.com")).await;
        assert_eq!(got, Some((200, ip(i % SERVICES))), "h{i}.example.com");
    }

    stop.cancel();
    proxy.await.unwrap();
    agent.agent.stop().await.unwrap();
    server.stop().await;
    for task in backends {
        task.abort();
    }
}

switchyard_control_plane::both_backends!(ten_thousand_hosts_on_one_listener);
