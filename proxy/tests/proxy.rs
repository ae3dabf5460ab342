//! The built-in proxy over real sockets: real backend servers on loopback,
//! real clients, configurations swapped live.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Either, Empty, Full, StreamBody};
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use switchyard::node::NodeConfig;
use switchyard::pb;
use switchyard::resource::Resource;
use switchyard_proxy::Builtin;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A backend HTTP server that answers with its name and echoes what the
/// proxy sent it (path, selected headers) in response headers.
struct Backend {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    /// Connections accepted.
    connections: Arc<AtomicU64>,
    /// Connections that ended (closed by either side).
    closed: Arc<AtomicU64>,
    stop: CancellationToken,
    _task: JoinHandle<()>,
}

impl Backend {
    async fn start(name: &'static str) -> Backend {
        Backend::answering(name, hyper::StatusCode::OK).await
    }

    /// A backend that answers every request with `status`.
    async fn answering(name: &'static str, status: hyper::StatusCode) -> Backend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let hits = Arc::new(AtomicU64::new(0));
        let connections = Arc::new(AtomicU64::new(0));
        let closed = Arc::new(AtomicU64::new(0));
        let stop = CancellationToken::new();
        let (h, s, accepted) = (hits.clone(), stop.clone(), connections.clone());
        let ended = closed.clone();
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let (stream, _) = tokio::select! {
                    _ = s.cancelled() => break,
                    a = listener.accept() => a.unwrap(),
                };
                accepted.fetch_add(1, Ordering::Relaxed);
                let (h, ended) = (h.clone(), ended.clone());
                conns.spawn(async move {
                    let svc =
                        hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                            h.fetch_add(1, Ordering::Relaxed);
                            async move {
                                if req.uri().path() == "/slow" {
                                    tokio::time::sleep(Duration::from_millis(300)).await;
                                }
                                if req.uri().path() == "/collect" {
                                    // The whole request body, then its size.
                                    let size = match req.into_body().collect().await {
                                        Ok(body) => body.to_bytes().len(),
                                        Err(_) => 0,
                                    };
                                    let text = Full::new(Bytes::from(format!("got {size}")));
                                    return Ok(Response::new(Either::Left(text)));
                                }
                                if req.uri().path() == "/echo" {
                                    // The request body, streamed back as it
                                    // arrives.
                                    let body = req.into_body();
                                    return Ok::<_, Infallible>(Response::new(Either::Right(body)));
                                }
                                let mut resp =
                                    Response::new(Either::Left(Full::new(Bytes::from(name))));
                                *resp.status_mut() = status;
                                let echo = |k: &str| {
                                    req.headers()
                                        .get(k)
                                        .cloned()
                                        .unwrap_or(hyper::header::HeaderValue::from_static(""))
                                };
                                resp.headers_mut().insert(
                                    "x-path",
                                    req.uri()
                                        .path_and_query()
                                        .unwrap()
                                        .as_str()
                                        .parse()
                                        .unwrap(),
                                );
                                resp.headers_mut()
                                    .insert("x-saw-forwarded-for", echo("x-forwarded-for"));
                                resp.headers_mut()
                                    .insert("x-saw-request-id", echo("x-request-id"));
                                resp.headers_mut().insert("x-saw-added", echo("x-added"));
                                resp.headers_mut().insert("x-saw-host", echo("host"));
                                resp.headers_mut().insert("x-saw-te", echo("te"));
                                resp.headers_mut()
                                    .insert("x-saw-connection", echo("connection"));
                                Ok(resp)
                            }
                        });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                    ended.fetch_add(1, Ordering::Relaxed);
                });
            }
        });
        Backend {
            addr,
            hits,
            connections,
            closed,
            stop,
            _task: task,
        }
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn endpoint(
    name: &str,
    service: &str,
    addr: SocketAddr,
    weight: u32,
    labels: &[(&str, &str)],
) -> pb::Endpoint {
    pb::Endpoint {
        name: name.into(),
        service: service.into(),
        address: addr.ip().to_string(),
        port: u32::from(addr.port()),
        weight,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        revision: 1,
        ..Default::default()
    }
}

fn service(name: &str, policy: pb::LbPolicy) -> pb::Service {
    pb::Service {
        name: name.into(),
        lb_policy: policy as i32,
        revision: 1,
        ..Default::default()
    }
}

fn dest(service: &str, weight: u32, subset: &[(&str, &str)]) -> pb::WeightedDestination {
    pb::WeightedDestination {
        service: service.into(),
        weight,
        subset: subset
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

fn rule(matches: Vec<pb::RouteMatch>, destinations: Vec<pb::WeightedDestination>) -> pb::RouteRule {
    pb::RouteRule {
        matches,
        action: Some(pb::RouteAction {
            destinations,
            ..Default::default()
        }),
    }
}

fn http_listener(port: u16, route: &str) -> pb::Listener {
    pb::Listener {
        name: "front".into(),
        address: "127.0.0.1".into(),
        port: u32::from(port),
        target: Some(pb::listener::Target::Route(route.into())),
        revision: 1,
        ..Default::default()
    }
}

/// One service `web` behind a catch-all route `web` and an HTTP listener on
/// `port`.
fn web_snapshot(web: pb::Service, endpoints: Vec<pb::Endpoint>, port: u16) -> pb::Snapshot {
    pb::Snapshot {
        services: vec![web],
        endpoints,
        routes: vec![pb::Route {
            name: "web".into(),
            revision: 1,
            rules: vec![rule(vec![], vec![dest("web", 1, &[])])],
            ..Default::default()
        }],
        listeners: vec![http_listener(port, "web")],
        ..Default::default()
    }
}

/// A proxy serving `web` with `backend` as its one endpoint behind the
/// catch-all route; its port.
async fn proxy_for(web: pb::Service, backend: &Backend) -> (Proxy, u16) {
    proxy_to(web, backend.addr).await
}

/// A proxy serving service `web` (one endpoint at `addr`) on a free port.
async fn proxy_to(web: pb::Service, addr: SocketAddr) -> (Proxy, u16) {
    let port = free_port();
    let snap = web_snapshot(web, vec![endpoint("web-1", "web", addr, 1, &[])], port);
    (Proxy::start(config(1, snap)).await, port)
}

/// Service `web` (round robin) with `breaker`.
fn web_with_breaker(breaker: pb::CircuitBreaker) -> pb::Service {
    pb::Service {
        circuit_breaker: Some(breaker),
        ..service("web", pb::LbPolicy::RoundRobin)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The configuration a valid snapshot describes, each resource validated
/// as the agent validates it.
fn config(revision: u64, snapshot: pb::Snapshot) -> Arc<NodeConfig> {
    use pb::resource::Kind as K;
    let mut config = NodeConfig {
        revision,
        ..NodeConfig::default()
    };
    let kinds = (snapshot.services.into_iter().map(K::Service))
        .chain(snapshot.endpoints.into_iter().map(K::Endpoint))
        .chain(snapshot.routes.into_iter().map(K::Route))
        .chain(snapshot.listeners.into_iter().map(K::Listener));
    for kind in kinds {
        let raw = pb::Resource {
            kind: Some(kind),
            ..Default::default()
        };
        config.insert(Resource::from_pb(&raw, "snapshot").expect("valid test resource"));
    }
    Arc::new(config)
}

/// A running proxy driven by a watch channel, as the agent drives it.
struct Proxy {
    config: watch::Sender<Arc<NodeConfig>>,
    stop: CancellationToken,
    task: JoinHandle<()>,
    metrics: switchyard_proxy::Metrics,
}

impl Proxy {
    async fn start(initial: Arc<NodeConfig>) -> Proxy {
        Proxy::start_with(Builtin::new(), initial).await
    }

    /// Runs `builtin` on two threads.
    async fn start_with(builtin: Builtin, initial: Arc<NodeConfig>) -> Proxy {
        let (config, rx) = watch::channel(initial.clone());
        let stop = CancellationToken::new();
        let builtin = builtin.with_threads(2);
        let metrics = builtin.metrics();
        let task = tokio::spawn(builtin.run(rx, stop.clone()));
        let proxy = Proxy {
            config,
            stop,
            task,
            metrics,
        };
        for l in initial.listeners.values() {
            wait_listening(SocketAddr::new(l.address, l.port)).await;
        }
        proxy
    }

    /// The proxy's metrics, as its endpoint serves them.
    fn metrics(&self) -> String {
        let mut enc = switchyard::metrics::Encoder::new();
        self.metrics.encode(&mut enc);
        enc.finish()
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(40), self.task)
            .await
            .unwrap()
            .unwrap();
    }
}

/// Polls `done` every 10 ms until it holds (`true`) or 5 s have passed
/// (`false`): for what the proxy does on its own time (a count changing, a
/// connection closing).
async fn eventually(mut done: impl FnMut() -> bool) -> bool {
    for _ in 0..500 {
        if done() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    done()
}

async fn wait_listening(addr: SocketAddr) {
    for _ in 0..500 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{addr} never opened");
}

fn client() -> Client<HttpConnector, Empty<Bytes>> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

struct Answer {
    status: u16,
    body: String,
    headers: hyper::HeaderMap,
}

async fn get(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    headers: &[(&str, &str)],
) -> Answer {
    let mut req = Request::get(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(req.body(Empty::new()).unwrap()),
    )
    .await
    .expect("request timed out")
    .expect("request failed");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    Answer {
        status,
        body,
        headers,
    }
}

async fn shares(
    client: &Client<HttpConnector, Empty<Bytes>>,
    url: &str,
    n: usize,
    headers: &[(&str, &str)],
) -> HashMap<String, f64> {
    let mut counts: HashMap<String, usize> = HashMap::new();
    for _ in 0..n {
        let a = get(client, url, headers).await;
        assert_eq!(a.status, 200, "{}", a.body);
        *counts.entry(a.body).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, v)| (k, v as f64 * 100.0 / n as f64))
        .collect()
}

fn assert_share(shares: &HashMap<String, f64>, name: &str, expected: f64, tolerance: f64) {
    let got = shares.get(name).copied().unwrap_or(0.0);
    assert!(
        (got - expected).abs() <= tolerance,
        "{name}: {got:.1}% (expected {expected}% ± {tolerance}); all: {shares:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policies_follow_weights() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let port = free_port();
    for policy in [
        pb::LbPolicy::RoundRobin,
        pb::LbPolicy::Random,
        pb::LbPolicy::LeastRequest,
    ] {
        let snap = web_snapshot(
            service("web", policy),
            vec![
                endpoint("a", "web", backends[0].addr, 1, &[]),
                endpoint("b", "web", backends[1].addr, 2, &[]),
                endpoint("c", "web", backends[2].addr, 7, &[]),
            ],
            port,
        );
        let proxy = Proxy::start(config(1, snap)).await;
        let s = shares(&client(), &format!("http://127.0.0.1:{port}/"), 1000, &[]).await;
        // Sequential requests: round robin is exact; random and least
        // request (nothing in flight) follow weights statistically.
        let tolerance = if policy == pb::LbPolicy::RoundRobin {
            0.5
        } else {
            4.0
        };
        assert_share(&s, "a", 10.0, tolerance);
        assert_share(&s, "b", 20.0, tolerance);
        assert_share(&s, "c", 70.0, tolerance);
        proxy.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_header_and_regex_routing_with_rewrite() {
    let v1 = Backend::start("v1").await;
    let v2 = Backend::start("v2").await;
    let api = Backend::start("api").await;
    let port = free_port();
    let header_match = pb::RouteMatch {
        headers: vec![pb::HeaderMatch {
            name: "x-canary".into(),
            value: Some(pb::StringMatch {
                kind: Some(pb::string_match::Kind::Exact("always".into())),
            }),
            invert: false,
        }],
        ..Default::default()
    };
    let regex_match = pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(pb::path_match::Kind::Regex("/api/v[0-9]+/.*".into())),
        }),
        ..Default::default()
    };
    let prefix_match = pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(pb::path_match::Kind::Prefix("/old/".into())),
        }),
        ..Default::default()
    };
    let mut rewrite = rule(vec![prefix_match], vec![dest("api", 1, &[])]);
    let action = rewrite.action.as_mut().unwrap();
    action.prefix_rewrite = "/new/".into();
    action.request_headers = Some(pb::HeaderRewrite {
        set: [("x-added".to_string(), "yes".to_string())].into(),
        ..Default::default()
    });
    let snap = pb::Snapshot {
        services: vec![
            service("web", pb::LbPolicy::RoundRobin),
            service("api", pb::LbPolicy::RoundRobin),
        ],
        endpoints: vec![
            endpoint("web-v1", "web", v1.addr, 1, &[("version", "v1")]),
            endpoint("web-v2", "web", v2.addr, 1, &[("version", "v2")]),
            endpoint("api-1", "api", api.addr, 1, &[]),
        ],
        routes: vec![pb::Route {
            name: "web".into(),
            revision: 1,
            rules: vec![
                rule(
                    vec![header_match],
                    vec![dest("web", 1, &[("version", "v2")])],
                ),
                rule(vec![regex_match], vec![dest("api", 1, &[])]),
                rewrite,
                rule(
                    vec![],
                    vec![
                        dest("web", 90, &[("version", "v1")]),
                        dest("web", 10, &[("version", "v2")]),
                    ],
                ),
            ],
            ..Default::default()
        }],
        listeners: vec![http_listener(port, "web")],
        ..Default::default()
    };
    let proxy = Proxy::start(config(1, snap)).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");

    let s = shares(&c, &format!("{base}/"), 2000, &[]).await;
    assert_share(&s, "v1", 90.0, 3.0);
    assert_share(&s, "v2", 10.0, 3.0);
    let s = shares(&c, &format!("{base}/"), 50, &[("x-canary", "always")]).await;
    assert_share(&s, "v2", 100.0, 0.0);

    let a = get(&c, &format!("{base}/api/v2/users?id=7"), &[]).await;
    assert_eq!((a.status, a.body.as_str()), (200, "api"));
    assert_eq!(a.headers["x-path"], "/api/v2/users?id=7");
    let a = get(&c, &format!("{base}/api/vX/users"), &[]).await;
    assert_ne!(a.body, "api", "regex must match the whole path");

    let a = get(
        &c,
        &format!("{base}/old/thing?q=1"),
        &[("x-forwarded-for", "10.1.1.1")],
    )
    .await;
    assert_eq!(a.body, "api");
    assert_eq!(a.headers["x-path"], "/new/thing?q=1");
    assert_eq!(a.headers["x-saw-added"], "yes");
    assert_eq!(a.headers["x-saw-forwarded-for"], "10.1.1.1, 127.0.0.1");
    let id = a.headers["x-saw-request-id"].to_str().unwrap().to_owned();
    assert!(
        id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()),
        "a request id (128 bits in hex) is added when absent: {id:?}"
    );
    let a = get(&c, &format!("{base}/old/thing"), &[]).await;
    assert_eq!(
        a.headers["x-saw-forwarded-for"], "127.0.0.1",
        "the client's address alone when there is no earlier hop"
    );
    assert_ne!(
        a.headers["x-saw-request-id"],
        id.as_str(),
        "each request its own id"
    );
    let a = get(&c, &format!("{base}/old/x"), &[("x-request-id", "abc")]).await;
    assert_eq!(
        a.headers["x-saw-request-id"], "abc",
        "an existing request id is kept"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_short_and_precise() {
    let up = Backend::start("up").await;
    let dead = free_port();
    let port = free_port();
    let exact = |p: &str| pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(pb::path_match::Kind::Exact(p.into())),
        }),
        ..Default::default()
    };
    let down = Backend::start("down").await;
    let mut sick = endpoint("sick-1", "sick", down.addr, 1, &[]);
    sick.health = pb::Health::Unhealthy as i32;
    let mut fine = endpoint("sick-2", "sick", up.addr, 1, &[]);
    fine.health = pb::Health::Healthy as i32;
    let snap = pb::Snapshot {
        services: vec![
            service("gone", pb::LbPolicy::RoundRobin),
            service("empty", pb::LbPolicy::RoundRobin),
            // Panic routing off: the healthy endpoint takes everything.
            pb::Service {
                panic_threshold_percent: Some(0),
                ..service("sick", pb::LbPolicy::RoundRobin)
            },
            // Default panic threshold (50%): with every endpoint unhealthy,
            // trying them beats failing every request.
            service("panicky", pb::LbPolicy::RoundRobin),
        ],
        endpoints: vec![
            endpoint(
                "gone-1",
                "gone",
                SocketAddr::from(([127, 0, 0, 1], dead)),
                1,
                &[],
            ),
            sick,
            fine,
            pb::Endpoint {
                health: pb::Health::Unhealthy as i32,
                ..endpoint("panicky-1", "panicky", up.addr, 1, &[])
            },
        ],
        routes: vec![pb::Route {
            name: "web".into(),
            revision: 1,
            rules: vec![
                rule(vec![exact("/gone")], vec![dest("gone", 1, &[])]),
                rule(vec![exact("/empty")], vec![dest("empty", 1, &[])]),
                rule(vec![exact("/sick")], vec![dest("sick", 1, &[])]),
                rule(vec![exact("/panicky")], vec![dest("panicky", 1, &[])]),
            ],
            ..Default::default()
        }],
        listeners: vec![http_listener(port, "web")],
        ..Default::default()
    };
    let proxy = Proxy::start(config(1, snap)).await;
    let c = client();
    let base = format!("http://127.0.0.1:{port}");
    let a = get(&c, &format!("{base}/nowhere"), &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (404, "switchyard: no route matches\n")
    );
    let a = get(&c, &format!("{base}/gone"), &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (502, "switchyard: upstream connect error\n")
    );
    let a = get(&c, &format!("{base}/empty"), &[]).await;
    assert_eq!(
        (a.status, a.body.as_str()),
        (503, "switchyard: no healthy upstream\n")
    );
    let s = shares(&c, &format!("{base}/sick"), 50, &[]).await;
    assert_share(&s, "up", 100.0, 0.0);
    assert_eq!(
        down.hits.load(Ordering::Relaxed),
        0,
        "an unhealthy endpoint receives no traffic"
    );
    proxy.stop().await;
}

/// 100 configuration swaps under continuous load: no failed request.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_reconfiguration_drops_nothing() {
    let a = Backend::start("a").await;
    let b = Backend::start("b").await;
    let port = free_port();
    let snap = |revision: u64, weight_a: u32| {
        config(
            revision,
            web_snapshot(
                service("web", pb::LbPolicy::RoundRobin),
                vec![
                    endpoint("a", "web", a.addr, weight_a, &[]),
                    endpoint("b", "web", b.addr, 1, &[]),
                ],
                port,
            ),
        )
    };
    let proxy = Proxy::start(snap(1, 1)).await;
    let stop = CancellationToken::new();
    let failures = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicU64::new(0));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (stop, failures, done) = (stop.clone(), failures.clone(), done.clone());
        load.spawn(async move {
            let c = client();
            while !stop.is_cancelled() {
                let a = get(&c, &format!("http://127.0.0.1:{port}/"), &[]).await;
                if a.status != 200 {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    for revision in 2..102 {
        proxy
            .config
            .send_replace(snap(revision, (revision % 5 + 1) as u32));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    while load.join_next().await.is_some() {}
    let total = done.load(Ordering::Relaxed);
    assert!(total > 200, "only {total} requests ran");
    assert_eq!(failures.load(Ordering::Relaxed), 0, "of {total} requests");
    eprintln!("100 swaps under load: {total} requests, 0 failed");
    proxy.stop().await;
}

/// A TCP listener relays both ways and passes a half-close on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_relays_both_ways_with_half_close() {
    // The backend reads until the client's half-close, then answers. It
    // serves any number of connections (the readiness probe is one).
    let echo = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let echo_addr = echo.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (mut s, _) = echo.accept().await.unwrap();
            conns.spawn(async move {
                let mut got = Vec::new();
                s.read_to_end(&mut got).await.unwrap();
                s.write_all(format!("got {} bytes", got.len()).as_bytes())
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let port = free_port();
    let snap = pb::Snapshot {
        services: vec![pb::Service {
            protocol: pb::Protocol::Tcp as i32,
            ..service("db", pb::LbPolicy::RoundRobin)
        }],
        endpoints: vec![endpoint("db-1", "db", echo_addr, 1, &[])],
        listeners: vec![pb::Listener {
            name: "db".into(),
            address: "127.0.0.1".into(),
            port: u32::from(port),
            protocol: pb::Protocol::Tcp as i32,
            target: Some(pb::listener::Target::Service("db".into())),
            revision: 1,
            ..Default::default()
        }],
        ..Default::default()
    };
    let proxy = Proxy::start(config(1, snap.clone())).await;
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let payload = vec![7u8; 100_000];
    conn.write_all(&payload).await.unwrap();
    conn.shutdown().await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_string(&mut answer))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(answer, "got 100000 bytes");

    // With max_connections 1, a second connection while one is open is
    // closed at once, and the backend never sees it.
    let limited = pb::Snapshot {
        services: vec![pb::Service {
            protocol: pb::Protocol::Tcp as i32,
            circuit_breaker: Some(pb::CircuitBreaker {
                max_connections: 1,
                ..Default::default()
            }),
            ..service("db", pb::LbPolicy::RoundRobin)
        }],
        ..snap
    };
    proxy.config.send_replace(config(2, limited));
    // The first connection holds the one place (it has not half-closed);
    // until the new configuration is live, a second one is relayed.
    let mut first = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    first.write_all(b"held").await.unwrap();
    // Its relay holds the place before a second connection asks for one
    // (either may be accepted by either proxy thread first).
    let held = "switchyard_agent_proxy_upstream_connections{service=\"db\"} 1";
    assert!(
        eventually(|| proxy.metrics().lines().any(|l| l == held)).await,
        "the first connection is relayed"
    );
    let mut refused = false;
    for _ in 0..100 {
        let mut second = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        second.shutdown().await.unwrap();
        let mut answer = String::new();
        tokio::time::timeout(Duration::from_secs(10), second.read_to_string(&mut answer))
            .await
            .unwrap()
            .unwrap();
        if answer.is_empty() {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        refused,
        "a second connection over max_connections is closed"
    );
    first.shutdown().await.unwrap();
    let mut answer = String::new();
    first.read_to_string(&mut answer).await.unwrap();
    assert_eq!(answer, "got 4 bytes", "the first is relayed");
    server.abort();
    proxy.stop().await;
}

/// A removed listener stops accepting, and a request in flight on it finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removed_listener_drains() {
    let slow = Backend::start("slow").await;
    let port = free_port();
    let with_listener = web_snapshot(
        service("web", pb::LbPolicy::RoundRobin),
        vec![endpoint("s", "web", slow.addr, 1, &[])],
        port,
    );
    let without = pb::Snapshot {
        listeners: vec![],
        ..with_listener.clone()
    };
    let proxy = Proxy::start(config(1, with_listener)).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/slow");
    let in_flight = tokio::spawn(async move { get(&c, &url, &[]).await.status });
    // Wait until the request is at the backend, i.e. in flight through the proxy.
    for _ in 0..500 {
        if slow.hits.load(Ordering::Relaxed) > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    assert_eq!(
        slow.hits.load(Ordering::Relaxed),
        1,
        "the slow request reached the backend"
    );
    proxy.config.send_replace(config(2, without));
    assert_eq!(
        in_flight.await.unwrap(),
        200,
        "the request in flight finished"
    );
    let mut refused = false;
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            refused = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(refused, "the removed listener stopped accepting");
    proxy.stop().await;
}

fn millis(ms: u64) -> Option<prost_types::Duration> {
    Some(prost_types::Duration::try_from(Duration::from_millis(ms)).unwrap())
}

/// Three backends behind one route; the third is `third`.
fn three(
    backends: &[Backend; 3],
    port: u16,
    service: pb::Service,
    action: pb::RouteAction,
    revision: u64,
) -> Arc<NodeConfig> {
    config(
        revision,
        pb::Snapshot {
            services: vec![service],
            endpoints: vec![
                endpoint("a", "web", backends[0].addr, 1, &[]),
                endpoint("b", "web", backends[1].addr, 1, &[]),
                endpoint("c", "web", backends[2].addr, 1, &[]),
            ],
            routes: vec![pb::Route {
                name: "web".into(),
                revision: 1,
                rules: vec![pb::RouteRule {
                    matches: vec![],
                    action: Some(pb::RouteAction {
                        destinations: vec![dest("web", 1, &[])],
                        ..action
                    }),
                }],
                ..Default::default()
            }],
            listeners: vec![http_listener(port, "web")],
            ..Default::default()
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_is_ejected_for_a_while() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::answering("bad", hyper::StatusCode::INTERNAL_SERVER_ERROR).await,
    ];
    let port = free_port();
    let web = pb::Service {
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx: 3,
            base_ejection_time: millis(1500),
            // The default share (10% of 3 endpoints) still lets one go.
            ..Default::default()
        }),
        ..service("web", pb::LbPolicy::RoundRobin)
    };
    let proxy = Proxy::start(three(
        &backends,
        port,
        web.clone(),
        pb::RouteAction::default(),
        1,
    ))
    .await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");

    // Round robin sends every third request to the bad endpoint until its
    // third 500 in a row ejects it.
    let mut errors = 0;
    while errors < 3 {
        let a = get(&c, &url, &[]).await;
        if a.status == 500 {
            errors += 1;
        }
        assert!(backends[2].hits.load(Ordering::Relaxed) <= 3);
    }
    let ejected = std::time::Instant::now();
    let hits = backends[2].hits.load(Ordering::Relaxed);
    assert_eq!(hits, 3);

    // While ejected it gets nothing, across a configuration change too.
    let mut served = 0;
    while ejected.elapsed() < Duration::from_millis(1200) {
        if served == 20 {
            let mut changed = web.clone();
            changed.labels = [("changed".to_string(), "yes".to_string())].into();
            proxy
                .config
                .send(three(
                    &backends,
                    port,
                    changed,
                    pb::RouteAction::default(),
                    2,
                ))
                .unwrap();
        }
        let a = get(&c, &url, &[]).await;
        assert_eq!(a.status, 200, "request {served} during the ejection");
        served += 1;
    }
    assert!(served > 40, "only {served} requests during the ejection");
    assert_eq!(backends[2].hits.load(Ordering::Relaxed), 3);
    eprintln!("ejected endpoint got 0 of {served} requests in 1.2 s");

    // Then it is back.
    tokio::time::sleep(Duration::from_millis(1600).saturating_sub(ejected.elapsed())).await;
    for _ in 0..6 {
        get(&c, &url, &[]).await;
    }
    assert!(
        backends[2].hits.load(Ordering::Relaxed) > 3,
        "the endpoint came back after its ejection"
    );
    proxy.stop().await;
}

fn retry_policy(on: &[pb::RetryOn], attempts: u32) -> pb::RouteAction {
    pb::RouteAction {
        retry: Some(pb::RetryPolicy {
            attempts,
            retry_on: on.iter().map(|o| *o as i32).collect(),
            backoff_base: millis(2),
            backoff_max: millis(20),
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_an_endpoint_that_dies() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let port = free_port();
    let action = retry_policy(
        &[
            pb::RetryOn::ConnectFailure,
            pb::RetryOn::GatewayError,
            pb::RetryOn::Reset,
        ],
        2,
    );
    let proxy = Proxy::start(three(
        &backends,
        port,
        service("web", pb::LbPolicy::RoundRobin),
        action,
        1,
    ))
    .await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let mut errors = vec![];
    let started = std::time::Instant::now();
    for i in 0..300 {
        if i == 100 {
            // Stop c: its listener and its open connections close.
            let dead = backends[2].addr;
            backends[2].stop.cancel();
            for _ in 0..500 {
                if tokio::net::TcpStream::connect(dead).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        let a = get(&c, &url, &[]).await;
        if a.status != 200 {
            errors.push((i, a.status, a.body));
        }
    }
    let elapsed = started.elapsed();
    assert!(errors.is_empty(), "client-visible errors: {errors:?}");
    let c_hits = backends[2].hits.load(Ordering::Relaxed);
    assert!(
        (30..=40).contains(&c_hits),
        "c served {c_hits} before it died"
    );
    let survivors: u64 = backends[..2]
        .iter()
        .map(|b| b.hits.load(Ordering::Relaxed))
        .sum();
    assert_eq!(survivors + c_hits, 300);
    eprintln!("300 requests, one endpoint killed after 100: 0 errors in {elapsed:?}");
    proxy.stop().await;
}

/// Sends `request` on `conn` and reads one answer (its head, then as many
/// body bytes as its `content-length` says).
async fn exchange(conn: &mut tokio::net::TcpStream, request: &[u8]) -> String {
    conn.write_all(request).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        if let Some(end) = answer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&answer[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map_or(0, |v| v.trim().parse().unwrap());
            if answer.len() >= end + 4 + length {
                return String::from_utf8_lossy(&answer).into_owned();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), conn.read(&mut buf))
            .await
            .expect("an answer in time")
            .unwrap();
        assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
}

/// An endpoint that answers the first request of each connection with
/// keep-alive, then closes the connection when the next request arrives on
/// it (as a server does whose idle timeout fires just then, or that would
/// not read a body it had not consumed). Returns its address and how many
/// connections it accepted.
async fn closing_on_reuse() -> (SocketAddr, Arc<AtomicU64>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = Arc::new(AtomicU64::new(0));
    let count = accepted.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            conns.spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                // The first request's head (these requests have no body).
                while !seen.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => seen.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfirst")
                    .await;
                // The next request on it: closed unanswered.
                let _ = conn.read(&mut buf).await;
            });
        }
    });
    (addr, accepted, task)
}

/// A kept-alive endpoint connection that closes as it is reused, before any
/// byte of the answer, is no failure of the endpoint: an idempotent request
/// without a body is sent once more (on another connection), with no retry
/// policy on the route; a POST is not, since the endpoint may have acted on
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_connection_closed_by_the_endpoint_is_tried_again_when_safe() {
    let (addr, accepted, endpoint) = closing_on_reuse().await;
    let (proxy, port) = proxy_to(service("web", pb::LbPolicy::RoundRobin), addr).await;
    // Every request on one client connection, so on one proxy thread, whose
    // pool keeps the endpoint connection for the next request.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let first = exchange(&mut conn, b"GET /a HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(first.starts_with("HTTP/1.1 200"), "{first:?}");
    assert_eq!(accepted.load(Ordering::Relaxed), 1);
    let second = exchange(&mut conn, b"GET /b HTTP/1.1\r\nhost: web\r\n\r\n").await;
    assert!(
        second.starts_with("HTTP/1.1 200") && second.ends_with("first"),
        "the GET is answered on another connection: {second:?}"
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    let post = exchange(
        &mut conn,
        b"POST /c HTTP/1.1\r\nhost: web\r\ncontent-length: 0\r\n\r\n",
    )
    .await;
    assert!(
        post.starts_with("HTTP/1.1 502"),
        "a POST is not sent again: {post:?}"
    );
    assert_eq!(accepted.load(Ordering::Relaxed), 2);
    proxy.stop().await;
    endpoint.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_reached_the_endpoint_is_not_retried() {
    let busy = Backend::answering("busy", hyper::StatusCode::SERVICE_UNAVAILABLE).await;
    let port = free_port();
    let snap = pb::Snapshot {
        services: vec![service("web", pb::LbPolicy::RoundRobin)],
        endpoints: vec![endpoint("busy", "web", busy.addr, 1, &[])],
        routes: vec![pb::Route {
            name: "web".into(),
            revision: 1,
            rules: vec![pb::RouteRule {
                matches: vec![],
                action: Some(pb::RouteAction {
                    destinations: vec![dest("web", 1, &[])],
                    ..retry_policy(&[pb::RetryOn::GatewayError], 2)
                }),
            }],
            ..Default::default()
        }],
        listeners: vec![http_listener(port, "web")],
        ..Default::default()
    };
    let proxy = Proxy::start(config(1, snap)).await;
    let url = format!("http://127.0.0.1:{port}/");
    let posting: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let resp = posting
        .request(
            Request::post(&url)
                .body(Full::new(Bytes::from_static(b"order #1")))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!(busy.hits.load(Ordering::Relaxed), 1, "a POST is sent once");

    // The same answer to a GET is retried twice.
    let before = busy.connections.load(Ordering::Relaxed);
    let a = get(&client(), &url, &[]).await;
    assert_eq!(a.status, 503);
    assert_eq!(
        busy.hits.load(Ordering::Relaxed),
        4,
        "a GET is tried 3 times"
    );
    // Each refused answer is read during the backoff, so its connection
    // serves the next try instead of being closed: the three tries open one
    // connection at most (none when the POST's is idle on the same thread).
    let opened = busy.connections.load(Ordering::Relaxed) - before;
    assert!(opened <= 1, "the GET's tries opened {opened} connections");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_response_bodies_stream_through_both_ways() {
    let backend = Backend::start("echo").await;
    let (proxy, port) = proxy_for(service("web", pb::LbPolicy::RoundRobin), &backend).await;
    type Chunks = StreamBody<
        tokio_stream::wrappers::ReceiverStream<Result<hyper::body::Frame<Bytes>, Infallible>>,
    >;
    // Every request on one client connection, so on one proxy thread,
    // whose idle upstream connections it reuses.
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut streaming, conn) = hyper::client::conn::http1::handshake::<
        _,
        Either<Full<Bytes>, Chunks>,
    >(TokioIo::new(stream))
    .await
    .unwrap();
    let _conn = tokio::spawn(conn);

    // Of unknown size (sent chunked), arriving a piece at a time: echoed
    // back while it is still being sent.
    let pieces: Vec<Bytes> = (0..64u8)
        .map(|i| Bytes::from(vec![b'a' + i % 26; 4096 + usize::from(i)]))
        .collect();
    let expected: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let body = StreamBody::new(tokio_stream::wrappers::ReceiverStream::new(rx));
    let sending = tokio::spawn(async move {
        for piece in pieces {
            tx.send(Ok(hyper::body::Frame::data(piece))).await.unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    });
    let req = Request::post("/echo")
        .header("host", "web")
        .body(Either::Right(body))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), streaming.send_request(req))
        .await
        .expect("in time")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    sending.await.unwrap();
    assert_eq!(echoed.len(), expected.len());
    assert!(echoed == expected, "the chunked body came back intact");

    // Of known size, larger than any buffer on the way.
    let big = Bytes::from(
        (0..3_000_000u32)
            .map(|i| (i % 251) as u8)
            .collect::<Vec<u8>>(),
    );
    let req = Request::post("/echo")
        .header("host", "web")
        .body(Either::Left(Full::new(big.clone())))
        .unwrap();
    streaming.ready().await.unwrap();
    let resp = streaming.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-length"], "3000000");
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(echoed == big, "the sized body came back intact");

    // Both exchanges left their upstream connection reusable.
    let req = Request::get("/")
        .header("host", "web")
        .body(Either::Left(Full::new(Bytes::new())))
        .unwrap();
    streaming.ready().await.unwrap();
    let resp = streaming.send_request(req).await.unwrap();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"echo");
    assert_eq!(backend.connections.load(Ordering::Relaxed), 1);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_clients_reach_http1_endpoints() {
    let backend = Backend::start("h1").await;
    let (proxy, port) = proxy_for(service("web", pb::LbPolicy::RoundRobin), &backend).await;
    type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
    let h2: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());

    // The authority becomes the upstream request's Host.
    let resp = h2
        .request(
            Request::get(format!("http://127.0.0.1:{port}/x?y=1"))
                .body(Full::new(Bytes::new()).boxed())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.version(), hyper::Version::HTTP_2);
    assert_eq!(resp.headers()["x-path"], "/x?y=1");
    assert_eq!(
        resp.headers()["x-saw-host"].to_str().unwrap(),
        format!("127.0.0.1:{port}")
    );
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"h1");

    // A body of unknown size (no content-length on HTTP/2) goes upstream
    // chunked and comes back whole.
    let pieces: Vec<Bytes> = (0..25).map(|i| Bytes::from(vec![b'a' + i; 4000])).collect();
    let payload: Vec<u8> = pieces.iter().flat_map(|p| p.iter().copied()).collect();
    let frames = tokio_stream::iter(
        pieces
            .into_iter()
            .map(|p| Ok::<_, Infallible>(hyper::body::Frame::data(p))),
    );
    let req = Request::post(format!("http://127.0.0.1:{port}/echo"))
        .body(StreamBody::new(frames).boxed())
        .unwrap();
    assert!(hyper::body::Body::size_hint(req.body()).exact().is_none());
    let resp = h2.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let echoed = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(echoed == payload, "{} bytes echoed", echoed.len());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn circuit_breaker_sheds_requests_over_the_limit() {
    let slow = Backend::start("slow").await;
    let breaker = pb::CircuitBreaker {
        max_requests: 2,
        ..Default::default()
    };
    let (proxy, port) = proxy_for(web_with_breaker(breaker), &slow).await;
    let url = format!("http://127.0.0.1:{port}/slow");
    let c = client();
    let mut requests = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let (c, url) = (c.clone(), url.clone());
        requests.spawn(async move {
            let started = std::time::Instant::now();
            let a = get(&c, &url, &[]).await;
            (a, started.elapsed())
        });
    }
    let mut ok = 0;
    let mut shed = vec![];
    while let Some(done) = requests.join_next().await {
        let (a, took) = done.unwrap();
        match a.status {
            200 => {
                ok += 1;
                assert!(took >= Duration::from_millis(300));
            }
            503 => {
                assert_eq!(a.body, "switchyard: circuit open (max_requests)\n");
                shed.push(took);
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    assert_eq!((ok, shed.len()), (2, 8));
    let slowest = shed.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(150),
        "shed requests must not wait for the backend: slowest {slowest:?}"
    );
    eprintln!("8 requests shed; slowest answer {slowest:?}");
    assert_eq!(slow.hits.load(Ordering::Relaxed), 2);

    // Once the two finish, the circuit closes again.
    let a = get(&c, &url, &[]).await;
    assert_eq!(a.status, 200);
    proxy.stop().await;
}

/// A request head over 64 KiB is refused with 431 before it reaches an
/// endpoint; a large one under the limit passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_head_is_refused() {
    let web = Backend::start("web").await;
    let (proxy, port) = proxy_for(service("web", pb::LbPolicy::RoundRobin), &web).await;
    let c = client();
    let url = format!("http://127.0.0.1:{port}/");
    let big = "a".repeat(16 * 1024);
    let a = get(&c, &url, &[("x-big", &big)]).await;
    assert_eq!(a.status, 200, "a 16 KiB header passes");

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let huge = "a".repeat(100 * 1024);
    let request = format!("GET / HTTP/1.1\r\nhost: web\r\nx-huge: {huge}\r\n\r\n");
    // The proxy may answer and close before it has read everything.
    let _ = conn.write_all(request.as_bytes()).await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 431"),
        "a 100 KiB header is refused: {answer:?}"
    );
    assert_eq!(
        web.hits.load(Ordering::Relaxed),
        1,
        "only the first reached the backend"
    );
    proxy.stop().await;
}

/// Requests whose framing could be read two ways (the usual request
/// smuggling vectors) are refused by the proxy: neither they nor what
/// they hide reach the endpoint, and their connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_never_reach_the_endpoint() {
    let web = Backend::start("web").await;
    let (proxy, port) = proxy_for(service("web", pb::LbPolicy::RoundRobin), &web).await;
    let hidden = "GET /hidden HTTP/1.1\r\nhost: web\r\n\r\n";
    let attempts = [
        format!(
            "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: {}\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{hidden}",
            5 + hidden.len()
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: web\r\ncontent-length: 0\r\ncontent-length: {}\r\n\r\n{hidden}",
            hidden.len()
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: identity, chunked\r\n\r\n0\r\n\r\n{hidden}"
        ),
        format!(
            "POST / HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunkedx\r\n\r\n0\r\n\r\n{hidden}"
        ),
    ];
    for attempt in attempts {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let _ = conn.write_all(attempt.as_bytes()).await;
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 501"),
            "{attempt:?} is refused: {answer:?}"
        );
        assert_eq!(
            answer.matches("HTTP/1.1").count(),
            1,
            "one answer, then the connection closes: {answer:?}"
        );
    }
    assert_eq!(
        web.hits.load(Ordering::Relaxed),
        0,
        "nothing reached the endpoint"
    );

    // Two requests pipelined on one connection are both served, in order.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(
        b"POST /a HTTP/1.1\r\nhost: web\r\ncontent-length: 3\r\n\r\nabcGET /b HTTP/1.1\r\nhost: web\r\nconnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200").count(), 2, "{answer:?}");
    assert_eq!(web.hits.load(Ordering::Relaxed), 2);
    proxy.stop().await;
}

/// `max_connections` caps the connections to a service; requests beyond
/// them wait for one (up to `max_pending_requests`), and the rest are shed
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_queues_then_sheds() {
    let slow = Backend::start("slow").await;
    let web = pb::Service {
        // Long enough that the last pending request (two backend turns of
        // 300 ms) does not give up waiting.
        connect_timeout: millis(10_000),
        ..web_with_breaker(pb::CircuitBreaker {
            max_connections: 2,
            max_pending_requests: 3,
            ..Default::default()
        })
    };
    let (proxy, port) = proxy_for(web, &slow).await;
    let url = format!("http://127.0.0.1:{port}/slow");
    let c = client();
    let mut requests = tokio::task::JoinSet::new();
    // Whichever two come first take the connections, the next three wait
    // for them, and the rest are shed.
    for _ in 0..10 {
        let (c, url) = (c.clone(), url.clone());
        requests.spawn(async move {
            let started = std::time::Instant::now();
            let a = get(&c, &url, &[]).await;
            (a, started.elapsed())
        });
    }
    let (mut served, mut shed) = (vec![], vec![]);
    while let Some(done) = requests.join_next().await {
        let (a, took) = done.unwrap();
        match a.status {
            200 => served.push(took),
            503 => {
                assert_eq!(
                    a.body,
                    "switchyard: circuit open (max_connections open, max_pending_requests waiting)\n"
                );
                shed.push(took);
            }
            other => panic!("unexpected {other}: {}", a.body),
        }
    }
    served.sort();
    eprintln!("served after {served:?}; shed after {shed:?}");
    assert_eq!((served.len(), shed.len()), (5, 5));
    // Two at once, two after one backend turn, the last after two.
    assert!(served[4] >= Duration::from_millis(550), "{served:?}");
    let slowest = shed.iter().max().unwrap();
    assert!(
        *slowest < Duration::from_millis(150),
        "shed requests must not wait: slowest {slowest:?}"
    );
    assert_eq!(slow.hits.load(Ordering::Relaxed), 5);
    assert_eq!(
        slow.connections.load(Ordering::Relaxed),
        2,
        "five requests over the two connections"
    );
    proxy.stop().await;
}

/// With one connection allowed, requests arriving on either proxy thread
/// share it: a thread at the limit uses the other thread's idle
/// connection instead of waiting for one of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_threads_share_a_limited_connection() {
    let web = Backend::start("web").await;
    let breaker = pb::CircuitBreaker {
        max_connections: 1,
        ..Default::default()
    };
    let (proxy, port) = proxy_for(web_with_breaker(breaker), &web).await;
    let url = format!("http://127.0.0.1:{port}/");
    for i in 0..20 {
        // A new client connection each time, taken by either thread.
        let a = get(&client(), &url, &[]).await;
        assert_eq!(a.status, 200, "request {i}: {}", a.body);
    }
    assert_eq!(web.hits.load(Ordering::Relaxed), 20);
    assert_eq!(web.connections.load(Ordering::Relaxed), 1);
    proxy.stop().await;
}

/// A burst of first requests to an HTTP/2 endpoint opens one connection
/// per proxy thread, not one per request: requests that find a connection
/// being opened wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_shares_one_http2_connection_per_thread() {
    let web = Backend::start("web").await;
    let h2 = pb::Service {
        protocol: pb::Protocol::Http2 as i32,
        ..service("web", pb::LbPolicy::RoundRobin)
    };
    let (proxy, port) = proxy_for(h2, &web).await;
    let url = format!("http://127.0.0.1:{port}/");
    let burst: Vec<_> = (0..20)
        .map(|_| {
            let url = url.clone();
            // Each on a client connection of its own.
            tokio::spawn(async move { get(&client(), &url, &[]).await.status })
        })
        .collect();
    for request in burst {
        assert_eq!(request.await.unwrap(), 200);
    }
    assert_eq!(web.hits.load(Ordering::Relaxed), 20);
    let opened = web.connections.load(Ordering::Relaxed);
    assert!(
        opened <= 2,
        "20 concurrent requests opened {opened} HTTP/2 connections (2 proxy threads)"
    );
    proxy.stop().await;
}

/// An idle upstream connection is reused within the service's idle
/// timeout, and closed after it even when no request comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_upstream_connections_close_after_the_idle_timeout() {
    let web = Backend::start("web").await;
    // Long enough that two requests in a row fit in it on a busy machine
    // (cargo test runs a file's tests side by side).
    let quick = pb::Service {
        idle_timeout: millis(1000),
        ..service("web", pb::LbPolicy::RoundRobin)
    };
    let (proxy, port) = proxy_for(quick, &web).await;
    let url = format!("http://127.0.0.1:{port}/");
    // One client connection, so that both requests use one proxy thread's
    // idle connections.
    let client = client();
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    assert_eq!(
        web.connections.load(Ordering::Relaxed),
        1,
        "reused within the idle timeout"
    );
    let idle_since = std::time::Instant::now();
    assert!(
        eventually(|| web.closed.load(Ordering::Relaxed) == 1).await,
        "the idle connection was closed"
    );
    let closed_after = idle_since.elapsed();
    // Pruned once a second: between the timeout and a second after it.
    assert!(
        closed_after >= Duration::from_millis(950) && closed_after < Duration::from_millis(3100),
        "closed {closed_after:?} after going idle"
    );
    assert_eq!(get(&client, &url, &[]).await.status, 200);
    assert_eq!(
        web.connections.load(Ordering::Relaxed),
        2,
        "a new one after"
    );
    proxy.stop().await;
}

/// Client connections are spread evenly over the proxy's threads: whichever
/// thread accepts a connection hands it to the one serving the fewest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_proxy_threads() {
    let web = Backend::start("web").await;
    let (proxy, port) = proxy_for(service("web", pb::LbPolicy::RoundRobin), &web).await;
    let open_by_thread = |proxy: &Proxy| -> Vec<u64> {
        proxy
            .metrics()
            .lines()
            .filter(|l| l.starts_with("switchyard_agent_proxy_open_connections{listener=\"front\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse().unwrap())
            .collect()
    };
    // The probe connections of start-up close first.
    eventually(|| open_by_thread(&proxy).iter().sum::<u64>() == 0).await;
    // Ten keep-alive connections, opened one after another, each answered
    // before the next opens, all kept open.
    let mut clients = vec![];
    for i in 0..10 {
        let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        let driver = tokio::spawn(conn);
        let req = Request::get("/")
            .header("host", "web")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let resp = tx.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200, "connection {i}");
        resp.into_body().collect().await.unwrap();
        clients.push((tx, driver));
    }
    let open = open_by_thread(&proxy);
    assert_eq!(open, vec![5, 5], "open connections by proxy thread");
    drop(clients);
    eventually(|| open_by_thread(&proxy).iter().sum::<u64>() == 0).await;
    assert_eq!(open_by_thread(&proxy), vec![0, 0], "after the clients left");
    proxy.stop().await;
}

/// gRPC end to end: a gRPC client speaks HTTP/2 cleartext to a `grpc`
/// listener, and the proxy forwards over HTTP/2 to a gRPC backend.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_passes_through_over_h2c() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("orders", tonic_health::ServingStatus::Serving)
        .await;
    let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let backend_addr = backend.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(backend),
                stop.clone().cancelled_owned(),
            ),
    );

    let port = free_port();
    let snap = pb::Snapshot {
        services: vec![pb::Service {
            protocol: pb::Protocol::Grpc as i32,
            ..service("orders", pb::LbPolicy::RoundRobin)
        }],
        endpoints: vec![endpoint("orders-1", "orders", backend_addr, 1, &[])],
        routes: vec![pb::Route {
            name: "orders".into(),
            revision: 1,
            rules: vec![rule(vec![], vec![dest("orders", 1, &[])])],
            ..Default::default()
        }],
        listeners: vec![pb::Listener {
            protocol: pb::Protocol::Grpc as i32,
            ..http_listener(port, "orders")
        }],
        ..Default::default()
    };
    let proxy = Proxy::start(config(1, snap)).await;
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    for _ in 0..20 {
        let resp = client
            .check(HealthCheckRequest {
                service: "orders".into(),
            })
            .await
            .expect("a gRPC call through the proxy")
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32);
    }
    // gRPC errors travel in trailers: they must come through as well.
    let err = client
        .check(HealthCheckRequest {
            service: "unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{err:?}");
    proxy.stop().await;
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// Consistent hashing through the proxy: a user sticks to one endpoint, for
/// ring hash and Maglev alike, and users spread over every endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hashing_keeps_a_user_on_one_endpoint() {
    let backends = [
        Backend::start("a").await,
        Backend::start("b").await,
        Backend::start("c").await,
    ];
    let port = free_port();
    for policy in [pb::LbPolicy::RingHash, pb::LbPolicy::Maglev] {
        let snap = web_snapshot(
            pb::Service {
                hash_policy: Some(pb::HashPolicy {
                    source: Some(pb::hash_policy::Source::Header("x-user".into())),
                }),
                ..service("web", policy)
            },
            vec![
                endpoint("a", "web", backends[0].addr, 1, &[]),
                endpoint("b", "web", backends[1].addr, 1, &[]),
                endpoint("c", "web", backends[2].addr, 1, &[]),
            ],
            port,
        );
        let proxy = Proxy::start(config(1, snap)).await;
        let c = client();
        let url = format!("http://127.0.0.1:{port}/");
        let mut placed: HashMap<String, usize> = HashMap::new();
        for user in 0..60 {
            let user = format!("user-{user}");
            let first = get(&c, &url, &[("x-user", &user)]).await.body;
            for _ in 0..5 {
                assert_eq!(
                    get(&c, &url, &[("x-user", &user)]).await.body,
                    first,
                    "{policy:?}: {user} moved"
                );
            }
            *placed.entry(first).or_default() += 1;
        }
        assert_eq!(
            placed.len(),
            3,
            "{policy:?}: users spread over every endpoint: {placed:?}"
        );
        assert!(placed.values().all(|&n| n >= 8), "{policy:?}: {placed:?}");
        proxy.stop().await;
    }
}

/// An endpoint that switches to a toy protocol when asked (`Upgrade:
/// shout`): it answers `101`, greets, then echoes what it reads in upper
/// case, and says `bye` when the client half-closes. Any other request is
/// answered `200 plain`, keep-alive. Returns its address and the request
/// heads it read.
async fn shouting_endpoint() -> (SocketAddr, Arc<std::sync::Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = heads.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request head (and whatever came after it).
                    let end = loop {
                        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                    let rest = buf.split_off(end);
                    buf = rest;
                    seen.lock().unwrap().push(head.clone());
                    if !head.contains("\r\nupgrade: shout\r\n") {
                        let _ = conn
                            .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nplain")
                            .await;
                        continue;
                    }
                    let _ = conn
                        .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: shout\r\nConnection: Upgrade\r\n\r\nhello ")
                        .await;
                    let mut pending = std::mem::take(&mut buf);
                    loop {
                        if !pending.is_empty() {
                            let _ = conn.write_all(&pending.to_ascii_uppercase()).await;
                            pending.clear();
                        }
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => pending.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let _ = conn.write_all(b" bye").await;
                    return;
                }
            });
        }
    });
    (addr, heads)
}

/// Reads from `conn` until what was read contains `until`.
async fn read_until(conn: &mut tokio::net::TcpStream, got: &mut Vec<u8>, until: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(got).contains(until) {
        let mut chunk = [0u8; 4096];
        match tokio::time::timeout_at(deadline, conn.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => got.extend_from_slice(&chunk[..n]),
            other => panic!(
                "waiting for {until:?}, got {:?} then {other:?}",
                String::from_utf8_lossy(got)
            ),
        }
    }
}

/// A proxy serving service `web` (one endpoint at `addr`) on a free port,
/// its catch-all rule allowing the protocol switches `allow` (`None`:
/// unset, the default).
async fn proxy_upgrading(addr: SocketAddr, allow: Option<&[&str]>) -> (Proxy, u16) {
    let port = free_port();
    let mut snap = web_snapshot(
        service("web", pb::LbPolicy::RoundRobin),
        vec![endpoint("web-1", "web", addr, 1, &[])],
        port,
    );
    snap.routes[0].rules[0].action.as_mut().unwrap().upgrades = allow.map(|a| pb::Upgrades {
        allow: a.iter().map(|p| p.to_string()).collect(),
    });
    (Proxy::start(config(1, snap)).await, port)
}

/// Sends `request` on a new connection to `port`, reads the answer until
/// `until` shows in it, and returns it.
async fn send_and_read(port: u16, request: &str, until: &str) -> String {
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    read_until(&mut conn, &mut got, until).await;
    String::from_utf8_lossy(&got).into_owned()
}

/// Only the protocol switches a rule allows are relayed. An `h2c` ask
/// (which validation never allows) and, by default, anything but WebSocket
/// reach the endpoint as ordinary requests, without `Upgrade`, the
/// `upgrade` token of `Connection`, or the fields that token named, and get
/// its ordinary answer; a rule allowing only `shout` relays `shout` and no
/// longer WebSocket; one allowing nothing relays nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_upgrades_a_rule_allows_are_relayed() {
    let (addr, heads) = shouting_endpoint().await;
    let h2c = "GET /h2c HTTP/1.1\r\nhost: web\r\nconnection: Upgrade, HTTP2-Settings\r\n\
               upgrade: h2c\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n";
    let websocket = "GET /ws HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\nupgrade: websocket\r\n\
                     sec-websocket-version: 13\r\nsec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let shout = "GET /shout HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\nupgrade: shout\r\n\r\n";
    let plain = "HTTP/1.1 200 OK";
    let switched = "HTTP/1.1 101 ";
    let cases: [(Option<&[&str]>, &str, &str, bool); 7] = [
        (None, h2c, plain, false),
        (None, shout, plain, false),
        (None, websocket, plain, true),
        (Some(&["shout"]), shout, switched, true),
        (Some(&["shout"]), websocket, plain, false),
        (Some(&["shout"]), h2c, plain, false),
        (Some(&[]), websocket, plain, false),
    ];
    for (allow, request, answer, relayed) in cases {
        let (proxy, port) = proxy_upgrading(addr, allow).await;
        let what = format!("{allow:?}: {}", request.lines().next().unwrap());
        let got = send_and_read(port, request, answer).await;
        assert!(got.starts_with(answer), "{what}: {got:?}");
        let head = heads
            .lock()
            .unwrap()
            .pop()
            .expect("the request reached the endpoint");
        assert_eq!(head.contains("\r\nupgrade: "), relayed, "{what}: {head:?}");
        assert_eq!(
            head.contains("\r\nconnection: upgrade\r\n"),
            relayed,
            "{what}: {head:?}"
        );
        assert!(!head.contains("http2-settings"), "{what}: {head:?}");
        proxy.stop().await;
    }
}

/// A protocol switch (as WebSocket asks for one) goes through: the client's
/// ask reaches the endpoint, the endpoint's `101` reaches the client, and
/// bytes then flow both ways (those sent right behind the request and the
/// `101` included) with the client's half-close passed on. An ask the
/// endpoint declines gets its ordinary answer, and the connection stays
/// HTTP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_switches_are_relayed_both_ways() {
    let (addr, heads) = shouting_endpoint().await;
    let (proxy, port) = proxy_upgrading(addr, Some(&["shout", "Whisper"])).await;

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET /chat HTTP/1.1\r\nhost: web\r\nconnection: keep-alive, Upgrade\r\nupgrade: shout\r\n\r\nearly ")
        .await
        .unwrap();
    let mut got = Vec::new();
    read_until(&mut conn, &mut got, "EARLY ").await;
    let answer = String::from_utf8_lossy(&got).to_string();
    let (head, tunnel) = answer.split_once("\r\n\r\n").unwrap();
    let head = head.to_lowercase();
    assert!(head.starts_with("http/1.1 101 "), "{answer:?}");
    assert!(head.contains("\r\nconnection: upgrade"), "{answer:?}");
    assert!(head.contains("\r\nupgrade: shout"), "{answer:?}");
    assert_eq!(tunnel, "hello EARLY ");
    conn.write_all(b"more").await.unwrap();
    read_until(&mut conn, &mut got, "MORE").await;
    // The client's half-close reaches the endpoint, whose last words and
    // close come back.
    conn.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut rest))
        .await
        .expect("the tunnel closes")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&rest), " bye");
    {
        let heads = heads.lock().unwrap();
        assert_eq!(heads.len(), 1);
        assert!(
            heads[0].contains("\r\nconnection: upgrade\r\n"),
            "{heads:?}"
        );
        assert!(heads[0].contains("\r\nupgrade: shout\r\n"), "{heads:?}");
        assert!(
            heads[0].contains("\r\nx-forwarded-for: 127.0.0.1\r\n"),
            "{heads:?}"
        );
    }

    // Declined, or not asked for properly (no `Connection: upgrade`): an
    // ordinary answer each, on one client connection.
    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET /a HTTP/1.1\r\nhost: web\r\nconnection: upgrade\r\nupgrade: whisper\r\n\r\nGET /b HTTP/1.1\r\nhost: web\r\nupgrade: shout\r\nconnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("both answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert_eq!(answer.matches("HTTP/1.1 200 OK").count(), 2, "{answer:?}");
    assert_eq!(answer.matches("plain").count(), 2, "{answer:?}");
    let heads = heads.lock().unwrap().clone();
    assert_eq!(heads.len(), 3);
    assert!(heads[1].contains("\r\nupgrade: whisper\r\n"), "{heads:?}");
    assert!(
        !heads[2].contains("upgrade"),
        "an ask without `Connection: upgrade` is not passed on: {heads:?}"
    );
    proxy.stop().await;
}

/// A WebSocket client and server (tokio-tungstenite) talk through the
/// proxy: the handshake's keys pass untouched, messages of both kinds go
/// both ways, and the closing handshake completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_sessions_work_through_the_proxy() {
    use futures::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move {
        let (conn, _) = listener.accept().await.unwrap();
        let mut ws = tokio_tungstenite::accept_async(conn).await.unwrap();
        // Echoes until the client closes.
        while let Some(message) = ws.next().await {
            if let m @ (Message::Text(_) | Message::Binary(_)) = message.unwrap() {
                ws.send(m).await.unwrap();
            }
        }
    });
    let (proxy, port) = proxy_to(service("web", pb::LbPolicy::RoundRobin), addr).await;

    let conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (mut ws, answer) = tokio_tungstenite::client_async("ws://web/echo", conn)
        .await
        .expect("the handshake goes through the proxy");
    assert_eq!(answer.status(), 101);
    ws.send(Message::text("hello")).await.unwrap();
    let big = vec![7u8; 200_000];
    ws.send(Message::binary(big.clone())).await.unwrap();
    let echoed = tokio::time::timeout(Duration::from_secs(10), async {
        (
            ws.next().await.unwrap().unwrap(),
            ws.next().await.unwrap().unwrap(),
        )
    })
    .await
    .expect("echoes arrive");
    assert_eq!(echoed.0, Message::text("hello"));
    assert_eq!(echoed.1, Message::binary(big));
    ws.close(None).await.unwrap();
    // The server's close answer comes back, then the stream ends.
    while let Some(Ok(message)) = ws.next().await {
        assert!(message.is_close(), "{message:?}");
    }
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server sees the close")
        .unwrap();
    // The client's side of the tunnel closes with it: nothing is left for
    // the listener's drain.
    drop(ws);
    tokio::time::timeout(Duration::from_secs(5), proxy.stop())
        .await
        .expect("the proxy stops without waiting for its drain time");
}

/// The Python of the test virtualenv: `scripts/test` installs
/// `tests/python/requirements.txt` in one and sets `SWITCHYARD_TEST_PYTHON`.
/// Tests that need it are `#[ignore]`d (plain `cargo test` skips them;
/// `scripts/test` runs them) and fail, rather than pass, without it.
fn test_python() -> String {
    std::env::var("SWITCHYARD_TEST_PYTHON").unwrap_or_else(|_| {
        panic!(
            "SWITCHYARD_TEST_PYTHON is not set: run scripts/test, or set it to a python \
             with tests/python/requirements.txt installed"
        )
    })
}

/// A server of `tests/python/`, run by the test virtualenv's Python;
/// killed when dropped (and it stops by itself when its standard input
/// closes, should the test process die first).
struct PythonServer {
    addr: SocketAddr,
    _child: tokio::process::Child,
}

impl PythonServer {
    /// Starts `script` and waits until it prints the port it serves on.
    async fn start(script: &str) -> PythonServer {
        use tokio::io::AsyncBufReadExt;
        let path = format!("{}/../tests/python/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = tokio::process::Command::new(test_python())
            .arg(&path)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {path}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        tokio::time::timeout(
            Duration::from_secs(30),
            tokio::io::BufReader::new(stdout).read_line(&mut line),
        )
        .await
        .unwrap_or_else(|_| panic!("{script} did not start within 30 s"))
        .unwrap();
        let port: u16 = line
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{script} printed {line:?}, not its port"));
        PythonServer {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            _child: child,
        }
    }
}

/// A proxy with a gRPC listener routing everything to the `grpc` service
/// `orders`, whose one endpoint is `addr`; its port.
async fn grpc_proxy_to(addr: SocketAddr) -> (Proxy, u16) {
    let port = free_port();
    let snap = pb::Snapshot {
        services: vec![pb::Service {
            protocol: pb::Protocol::Grpc as i32,
            ..service("orders", pb::LbPolicy::RoundRobin)
        }],
        endpoints: vec![endpoint("orders-1", "orders", addr, 1, &[])],
        routes: vec![pb::Route {
            name: "orders".into(),
            revision: 1,
            rules: vec![rule(vec![], vec![dest("orders", 1, &[])])],
            ..Default::default()
        }],
        listeners: vec![pb::Listener {
            protocol: pb::Protocol::Grpc as i32,
            ..http_listener(port, "orders")
        }],
        ..Default::default()
    };
    (Proxy::start(config(1, snap)).await, port)
}

/// Unary and server-streaming gRPC calls through the proxy on `port` to a
/// health service that answers `Check` with SERVING (NOT_FOUND for the
/// service `unknown`) and streams SERVING, NOT_SERVING, SERVING for
/// `Watch`.
async fn health_calls_through(port: u16, server: &str) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .timeout(Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let ask = |service: &str| HealthCheckRequest {
        service: service.into(),
    };
    for _ in 0..5 {
        let resp = client
            .check(ask("orders"))
            .await
            .unwrap_or_else(|e| panic!("{server}: a unary call through the proxy: {e:?}"))
            .into_inner();
        assert_eq!(resp.status, ServingStatus::Serving as i32, "{server}");
    }
    // An error status travels in the trailers.
    let err = client.check(ask("unknown")).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound, "{server}: {err:?}");

    let mut stream = client
        .watch(ask("orders"))
        .await
        .unwrap_or_else(|e| panic!("{server}: a streaming call through the proxy: {e:?}"))
        .into_inner();
    let mut seen = Vec::new();
    while let Some(message) = stream
        .message()
        .await
        .unwrap_or_else(|e| panic!("{server}: the stream through the proxy: {e:?}"))
    {
        seen.push(message.status);
    }
    let (up, down) = (
        ServingStatus::Serving as i32,
        ServingStatus::NotServing as i32,
    );
    assert_eq!(seen, vec![up, down, up], "{server}: every streamed message");
}

/// A tonic server with the same health service as
/// `tests/python/grpc_server.py`.
#[derive(Default)]
struct TonicHealth;

#[tonic::async_trait]
impl tonic_health::pb::health_server::Health for TonicHealth {
    async fn check(
        &self,
        req: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> {
        use tonic_health::pb::health_check_response::ServingStatus;
        if req.get_ref().service == "unknown" {
            return Err(tonic::Status::not_found("unknown service"));
        }
        Ok(tonic::Response::new(
            tonic_health::pb::HealthCheckResponse {
                status: ServingStatus::Serving as i32,
            },
        ))
    }

    type WatchStream = tokio_stream::Iter<
        std::vec::IntoIter<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>,
    >;

    async fn watch(
        &self,
        _: tonic::Request<tonic_health::pb::HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        use tonic_health::pb::health_check_response::ServingStatus;
        let statuses = [
            ServingStatus::Serving,
            ServingStatus::NotServing,
            ServingStatus::Serving,
        ];
        let messages: Vec<_> = statuses
            .into_iter()
            .map(|s| Ok(tonic_health::pb::HealthCheckResponse { status: s as i32 }))
            .collect();
        Ok(tonic::Response::new(tokio_stream::iter(messages)))
    }
}

/// gRPC through the proxy to a tonic server, over HTTP/2 to the endpoint:
/// unary and server-streaming calls, error statuses in trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_reach_a_tonic_server() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                TonicHealth,
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let (proxy, port) = grpc_proxy_to(addr).await;
    health_calls_through(port, "tonic").await;
    proxy.stop().await;
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// gRPC through the proxy to a grpcio server (the C core, which refuses a
/// request without `te: trailers`), over HTTP/2 to the endpoint: unary and
/// server-streaming calls, error statuses in trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SWITCHYARD_TEST_PYTHON (scripts/test sets it)"]
async fn grpc_calls_reach_a_grpcio_server() {
    let server = PythonServer::start("grpc_server.py").await;
    let (proxy, port) = grpc_proxy_to(server.addr).await;
    health_calls_through(port, "grpcio").await;
    proxy.stop().await;
}

/// A gRPC endpoint too slow for any deadline: an HTTP/2 server that holds
/// every call for 30 s before answering it. Unlike a gRPC server it does
/// not read `grpc-timeout`, so only the proxy (or the client) can end a
/// call sooner. Counts the calls that reach it.
async fn slow_grpc_endpoint() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let seen = calls.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(move |_: Request<hyper::body::Incoming>| {
                        seen.fetch_add(1, Ordering::Relaxed);
                        async {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            let mut resp = Response::new(Empty::<Bytes>::new());
                            resp.headers_mut()
                                .insert("content-type", "application/grpc".parse().unwrap());
                            resp.headers_mut()
                                .insert("grpc-status", "0".parse().unwrap());
                            Ok::<_, Infallible>(resp)
                        }
                    });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(conn), service)
                    .await;
            });
        }
    });
    (addr, calls)
}

/// The ports of [`refusing_grpc_proxy`]'s listeners.
struct GrpcPorts {
    /// A route whose one rule matches no call: no route.
    nowhere: u16,
    /// A service without endpoints: no healthy upstream.
    empty: u16,
    /// The slow endpoint, under the default route timeout (15 s).
    slow: u16,
    /// The slow endpoint, under a route timeout of 300 ms.
    hasty: u16,
}

/// A proxy whose gRPC listeners each lead to a refusal of the proxy's own
/// (see [`GrpcPorts`]); `slow` is a [`slow_grpc_endpoint`].
async fn refusing_grpc_proxy(slow: SocketAddr) -> (Proxy, GrpcPorts) {
    let grpc = |name: &str| pb::Service {
        protocol: pb::Protocol::Grpc as i32,
        ..service(name, pb::LbPolicy::RoundRobin)
    };
    let route = |name: &str, matches: Vec<pb::RouteMatch>, to: &str, timeout_ms: Option<u64>| {
        let mut rule = rule(matches, vec![dest(to, 1, &[])]);
        rule.action.as_mut().unwrap().timeout = timeout_ms.and_then(millis);
        pb::Route {
            name: name.into(),
            revision: 1,
            rules: vec![rule],
            ..Default::default()
        }
    };
    let never = pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(pb::path_match::Kind::Exact("/nothing".into())),
        }),
        ..Default::default()
    };
    let ports = GrpcPorts {
        nowhere: free_port(),
        empty: free_port(),
        slow: free_port(),
        hasty: free_port(),
    };
    let listener = |port: u16, route: &str| pb::Listener {
        name: route.into(),
        protocol: pb::Protocol::Grpc as i32,
        ..http_listener(port, route)
    };
    let snap = pb::Snapshot {
        services: vec![grpc("empty"), grpc("slow")],
        endpoints: vec![endpoint("slow-1", "slow", slow, 1, &[])],
        routes: vec![
            route("nowhere", vec![never], "slow", None),
            route("empty", vec![], "empty", None),
            route("slow", vec![], "slow", None),
            route("hasty", vec![], "slow", Some(300)),
        ],
        listeners: vec![
            listener(ports.nowhere, "nowhere"),
            listener(ports.empty, "empty"),
            listener(ports.slow, "slow"),
            listener(ports.hasty, "hasty"),
        ],
        ..Default::default()
    };
    (Proxy::start(config(1, snap)).await, ports)
}

/// A health client (tonic) to the proxy's `port`, with no deadline of its
/// own.
async fn health_client(
    port: u16,
) -> tonic_health::pb::health_client::HealthClient<tonic::transport::Channel> {
    let channel = tonic::transport::Channel::from_shared(format!("http://127.0.0.1:{port}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    tonic_health::pb::health_client::HealthClient::new(channel)
}

/// The status and message of a call that must have failed.
fn status<T>(r: Result<T, tonic::Status>) -> (tonic::Code, String) {
    match r {
        Ok(_) => panic!("the call succeeded"),
        Err(e) => (e.code(), e.message().to_owned()),
    }
}

/// The value of the sample of `metrics` whose name and labels are `series`.
fn sample(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {series} in {metrics}"))
}

/// gRPC calls the proxy answers itself get a gRPC status a tonic client
/// reads (not an HTTP error it takes for a broken protocol): UNIMPLEMENTED
/// with no route, UNAVAILABLE with no healthy endpoint (unary and
/// streaming), DEADLINE_EXCEEDED once the route's timeout passes, each
/// with the proxy's reason; and DEADLINE_EXCEEDED once the client's
/// `grpc-timeout` passes, as one header block that ends the stream. The
/// listener's counters class them by the HTTP status they stand for, not
/// as `2xx`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_calls_the_proxy_refuses_get_a_grpc_status() {
    use tonic_health::pb::HealthCheckRequest;
    let (slow, calls) = slow_grpc_endpoint().await;
    let (proxy, ports) = refusing_grpc_proxy(slow).await;
    let ask = || HealthCheckRequest {
        service: "orders".into(),
    };

    let mut c = health_client(ports.nowhere).await;
    assert_eq!(
        status(c.check(ask()).await),
        (
            tonic::Code::Unimplemented,
            "switchyard: no route matches".into()
        )
    );
    let mut c = health_client(ports.empty).await;
    let unavailable = (
        tonic::Code::Unavailable,
        "switchyard: no healthy upstream".to_owned(),
    );
    assert_eq!(status(c.check(ask()).await), unavailable);
    assert_eq!(status(c.watch(ask()).await), unavailable, "streaming");

    // The route's timeout (300 ms), the client setting no deadline.
    let mut c = health_client(ports.hasty).await;
    assert_eq!(
        status(c.check(ask()).await),
        (
            tonic::Code::DeadlineExceeded,
            "switchyard: upstream timed out".into()
        )
    );

    // The client's deadline (`grpc-timeout: 300m`) is shorter than the
    // route's timeout (15 s): the proxy gives up when it passes. gRPC
    // libraries keep the deadline themselves as well, and one of theirs
    // would race the proxy, so this client is a plain HTTP/2 one, which
    // keeps no timer: only the proxy can end the call (the endpoint ignores
    // the deadline). The answer is one header block ending the stream.
    let h2: Client<HttpConnector, Full<Bytes>> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    // A gRPC message (uncompressed, 8 bytes): HealthCheckRequest{"orders"}.
    let message = b"\0\0\0\0\x08\x0a\x06orders";
    let call = Request::post(format!(
        "http://127.0.0.1:{}/grpc.health.v1.Health/Check",
        ports.slow
    ))
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "300m")
    .body(Full::new(Bytes::from_static(message)))
    .unwrap();
    let started = std::time::Instant::now();
    let resp = tokio::time::timeout(Duration::from_secs(10), h2.request(call))
        .await
        .expect("answered before the endpoint would")
        .unwrap();
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(300) && took < Duration::from_secs(5),
        "ended at the client's deadline: {took:?}"
    );
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["content-type"], "application/grpc");
    assert_eq!(h["grpc-status"], "4", "DEADLINE_EXCEEDED");
    assert_eq!(h["grpc-message"], "switchyard: upstream timed out");
    {
        use hyper::body::Body as _;
        assert!(resp.body().is_end_stream(), "Trailers-Only: no body");
    }
    assert_eq!(
        calls.load(Ordering::Relaxed),
        2,
        "both reached the endpoint"
    );

    let m = proxy.metrics();
    let errors = |listener: &str, reason: &str| {
        sample(
            &m,
            &format!(
                "switchyard_agent_proxy_errors_total{{listener=\"{listener}\",reason=\"{reason}\"}}"
            ),
        )
    };
    let requests = |listener: &str, class: &str| {
        sample(
            &m,
            &format!(
                "switchyard_agent_proxy_requests_total{{listener=\"{listener}\",class=\"{class}\"}}"
            ),
        )
    };
    assert_eq!(errors("nowhere", "no_route"), 1);
    assert_eq!(requests("nowhere", "4xx"), 1);
    assert_eq!(errors("empty", "no_healthy_upstream"), 2);
    assert_eq!(requests("empty", "5xx"), 2);
    assert_eq!(errors("slow", "timeout"), 1);
    assert_eq!(errors("hasty", "timeout"), 1);
    for listener in ["nowhere", "empty", "slow", "hasty"] {
        assert_eq!(requests(listener, "2xx"), 0, "{listener}");
    }
    proxy.stop().await;
}

/// What `tests/python/grpc_client.py` reports of each of `calls` made
/// through the proxy's `port`.
async fn grpcio_calls(port: u16, calls: &[&str]) -> Vec<serde_json::Value> {
    let script = format!(
        "{}/../tests/python/grpc_client.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new(test_python())
            .arg(&script)
            .arg(format!("127.0.0.1:{port}"))
            .args(calls)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("the grpcio client is done within 60 s")
    .unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reports: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), calls.len(), "{reports:?}");
    reports
}

/// A grpcio client (the C core) through the proxy reaches a grpcio server
/// and a tonic server: unary calls, an error status in trailers, and a
/// server-streaming call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SWITCHYARD_TEST_PYTHON (scripts/test sets it)"]
async fn a_grpcio_client_reaches_grpcio_and_tonic_servers() {
    let grpcio = PythonServer::start("grpc_server.py").await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tonic_addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    let tonic_server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(tonic_health::pb::health_server::HealthServer::new(
                TonicHealth,
            ))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    for (server, addr) in [("grpcio", grpcio.addr), ("tonic", tonic_addr)] {
        let (proxy, port) = grpc_proxy_to(addr).await;
        let r = grpcio_calls(
            port,
            &[
                "check:orders",
                "check:orders",
                "check:unknown",
                "watch:orders",
            ],
        )
        .await;
        for ok in &r[..2] {
            assert_eq!(ok["code"], "OK", "{server}: {ok}");
            assert_eq!(ok["statuses"], serde_json::json!([1]), "{server}: SERVING");
        }
        assert_eq!(r[2]["code"], "NOT_FOUND", "{server}: {}", r[2]);
        assert_eq!(r[2]["details"], "unknown service", "{server}");
        assert_eq!(r[3]["code"], "OK", "{server}: {}", r[3]);
        assert_eq!(
            r[3]["statuses"],
            serde_json::json!([1, 2, 1]),
            "{server}: every streamed message"
        );
        proxy.stop().await;
    }
    stop.cancel();
    tonic_server.await.unwrap().unwrap();
}

/// A grpcio client gets the proxy's gRPC statuses: UNAVAILABLE with the
/// reason when no endpoint is healthy (unary and streaming), UNIMPLEMENTED
/// with no route, DEADLINE_EXCEEDED with its deadline shorter than the
/// route's timeout, and with the route's timeout passing first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SWITCHYARD_TEST_PYTHON (scripts/test sets it)"]
async fn a_grpcio_client_gets_the_proxys_grpc_statuses() {
    let (slow, _) = slow_grpc_endpoint().await;
    let (proxy, ports) = refusing_grpc_proxy(slow).await;

    let r = grpcio_calls(ports.empty, &["check:orders", "watch:orders"]).await;
    for call in &r {
        assert_eq!(call["code"], "UNAVAILABLE", "{call}");
        assert_eq!(call["details"], "switchyard: no healthy upstream", "{call}");
    }
    let r = grpcio_calls(ports.nowhere, &["check:orders"]).await;
    assert_eq!(r[0]["code"], "UNIMPLEMENTED", "{}", r[0]);
    assert_eq!(r[0]["details"], "switchyard: no route matches");

    // A deadline of 500 ms, the route's timeout 15 s, the endpoint's
    // answer 30 s away: the call ends at the deadline. (grpcio keeps the
    // deadline itself as well: which of the two ends the call first is a
    // matter of microseconds, so only the code and the time are asserted
    // here; `grpc_calls_the_proxy_refuses_get_a_grpc_status` shows the
    // proxy's own answer to a client that keeps no timer.)
    let r = grpcio_calls(ports.slow, &["check:orders@0.5"]).await;
    assert_eq!(r[0]["code"], "DEADLINE_EXCEEDED", "{}", r[0]);
    let took = r[0]["seconds"].as_f64().unwrap();
    assert!((0.5..5.0).contains(&took), "{}", r[0]);
    // The route's timeout (300 ms) before the client's deadline (10 s).
    let r = grpcio_calls(ports.hasty, &["check:orders@10"]).await;
    assert_eq!(r[0]["code"], "DEADLINE_EXCEEDED", "{}", r[0]);
    assert_eq!(r[0]["details"], "switchyard: upstream timed out");
    proxy.stop().await;
}

/// `TE` passes on only as `te: trailers`, to HTTP/1.1 endpoints (named in
/// `Connection`, as RFC 9110 §10.1.4 asks) and HTTP/2 ones alike; any
/// other transfer coding preference is this hop's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn te_trailers_alone_passes_on() {
    let backend = Backend::start("web").await;
    for protocol in [pb::Protocol::Http, pb::Protocol::Http2] {
        let web = pb::Service {
            protocol: protocol as i32,
            ..service("web", pb::LbPolicy::RoundRobin)
        };
        let (proxy, port) = proxy_for(web, &backend).await;
        let c = client();
        let url = format!("http://127.0.0.1:{port}/");
        let a = get(&c, &url, &[("te", "gzip, trailers"), ("connection", "te")]).await;
        assert_eq!(a.status, 200, "{protocol:?}: {}", a.body);
        assert_eq!(a.headers["x-saw-te"], "trailers", "{protocol:?}");
        let connection = a.headers["x-saw-connection"].to_str().unwrap();
        match protocol {
            pb::Protocol::Http => assert_eq!(connection, "te"),
            _ => assert_eq!(connection, "", "no connection header over HTTP/2"),
        }
        let a = get(&c, &url, &[("te", "gzip"), ("connection", "te")]).await;
        assert_eq!(a.status, 200, "{protocol:?}: {}", a.body);
        assert_eq!(a.headers["x-saw-te"], "", "{protocol:?}");
        assert_eq!(a.headers["x-saw-connection"], "", "{protocol:?}");
        proxy.stop().await;
    }
}

/// HTTP/2 to an endpoint carries the client's authority as `:authority`
/// and no `host` header (RFC 9113 §8.3.1), so that a strict server
/// (python-h2 with its default checks, under hypercorn) takes the request:
/// an HTTP/1.1 client's Host, an HTTP/2 client's `:authority`, and the
/// endpoint's address for an HTTP/1.0 client that sent neither.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs SWITCHYARD_TEST_PYTHON (scripts/test sets it)"]
async fn http2_endpoints_get_the_client_authority_and_no_host() {
    let server = PythonServer::start("h2_server.py").await;
    let web = pb::Service {
        protocol: pb::Protocol::Http2 as i32,
        ..service("web", pb::LbPolicy::RoundRobin)
    };
    let (proxy, port) = proxy_to(web, server.addr).await;

    let a = get(
        &client(),
        &format!("http://127.0.0.1:{port}/"),
        &[("host", "shop.example")],
    )
    .await;
    assert_eq!((a.status, a.body.as_str()), (200, "shop.example"));
    assert_eq!(a.headers["x-http-version"], "2", "HTTP/2 to the endpoint");

    type Body = http_body_util::combinators::BoxBody<Bytes, Infallible>;
    let h2: Client<HttpConnector, Body> = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new());
    let resp = h2
        .request(
            Request::get(format!("http://localhost:{port}/"))
                .body(Full::new(Bytes::new()).boxed())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(String::from_utf8_lossy(&body), format!("localhost:{port}"));

    let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    conn.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer:?}");
    assert!(
        answer.ends_with(&format!("\r\n\r\n{}", server.addr)),
        "{answer:?}"
    );
    proxy.stop().await;
}

/// What an endpoint of [`expecting_endpoint`] saw of one request: its
/// head, and how many body bytes came before the connection closed.
type Seen = Arc<std::sync::Mutex<Vec<(String, usize)>>>;

/// An endpoint for `Expect: 100-continue`, one request per connection, by
/// path: `/limited` answers `413` at once (closing) and then counts the
/// body bytes that still come; `/agree` answers `100 Continue` when asked
/// to, reads the body and answers `200 got N`; `/deaf` reads the body
/// without a `100` and answers the same.
async fn expecting_endpoint() -> (SocketAddr, Seen) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Seen = Arc::default();
    let record = seen.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let record = record.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let end = loop {
                    if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        break at + 4;
                    }
                    let mut chunk = [0u8; 4096];
                    match conn.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                };
                let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                let mut body = buf.len() - end;
                let length: usize = head
                    .split("\r\n")
                    .find_map(|l| l.strip_prefix("content-length: "))
                    .map_or(0, |n| n.parse().unwrap());
                let read_body = async |conn: &mut tokio::net::TcpStream, body: &mut usize| {
                    let mut chunk = [0u8; 4096];
                    while *body < length {
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => *body += n,
                        }
                    }
                };
                if head.starts_with("post /limited ") {
                    let _ = conn
                        .write_all(b"HTTP/1.1 413 Content Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                        .await;
                    // Whatever of the body still comes, until the proxy
                    // closes.
                    let _ = tokio::time::timeout(
                        Duration::from_secs(5),
                        read_body(&mut conn, &mut body),
                    )
                    .await;
                } else {
                    if head.starts_with("post /agree ")
                        && head.contains("\r\nexpect: 100-continue\r\n")
                    {
                        let _ = conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await;
                    }
                    read_body(&mut conn, &mut body).await;
                    let text = format!("got {body}");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{text}",
                        text.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                }
                record.lock().unwrap().push((head, body));
            });
        }
    });
    (addr, seen)
}

/// `Expect: 100-continue` goes to the endpoint, whose answer decides: an
/// early final status (`413`) reaches the client before it has sent any
/// body byte (and no body byte reaches the endpoint); a `100` reaches it
/// as the go-ahead for the body; an endpoint that ignores the expectation
/// gets the body after a short wait all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered_by_the_endpoint() {
    let (addr, seen) = expecting_endpoint().await;
    let (proxy, port) = proxy_to(service("web", pb::LbPolicy::RoundRobin), addr).await;
    let connect = || tokio::net::TcpStream::connect(("127.0.0.1", port));

    // Refused early: the client sends nothing but the head.
    let mut conn = connect().await.unwrap();
    conn.write_all(
        b"POST /limited HTTP/1.1\r\nhost: web\r\ncontent-length: 100000\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    read_until(&mut conn, &mut got, "\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&got);
    assert!(
        answer.starts_with("HTTP/1.1 413 "),
        "the endpoint's 413 first, no 100: {answer:?}"
    );
    assert!(
        eventually(|| seen.lock().unwrap().len() == 1).await,
        "the endpoint saw the connection end"
    );
    {
        let seen = seen.lock().unwrap();
        let (head, body) = &seen[0];
        assert!(head.contains("\r\nexpect: 100-continue\r\n"), "{head:?}");
        assert_eq!(*body, 0, "no body byte reached the endpoint");
    }
    drop(conn);

    // Agreed: the endpoint's 100 is the client's go-ahead.
    let mut conn = connect().await.unwrap();
    conn.write_all(
        b"POST /agree HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    read_until(&mut conn, &mut got, "\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&got).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{answer:?}"
    );
    conn.write_all(b"hello").await.unwrap();
    read_until(&mut conn, &mut got, "got 5").await;
    let answer = String::from_utf8_lossy(&got);
    assert!(answer.contains("\r\n\r\nHTTP/1.1 200 OK\r\n"), "{answer:?}");

    // Ignored: the body goes after a short wait, as the client's own 100
    // tells it to send it.
    let mut conn = connect().await.unwrap();
    conn.write_all(
        b"POST /deaf HTTP/1.1\r\nhost: web\r\ncontent-length: 5\r\nexpect: 100-continue\r\n\r\n",
    )
    .await
    .unwrap();
    let mut got = Vec::new();
    read_until(&mut conn, &mut got, "\r\n\r\n").await;
    let answer = String::from_utf8_lossy(&got).to_string();
    assert!(
        answer.starts_with("HTTP/1.1 100 Continue\r\n"),
        "{answer:?}"
    );
    conn.write_all(b"hello").await.unwrap();
    read_until(&mut conn, &mut got, "got 5").await;
    proxy.stop().await;
}

/// The kernel's count of connections dropped because a listen queue was
/// full (`TcpExt: ListenOverflows` in /proc/net/netstat), for this network
/// namespace.
fn listen_overflows() -> u64 {
    let netstat = std::fs::read_to_string("/proc/net/netstat").unwrap();
    let mut lines = netstat.lines().filter(|l| l.starts_with("TcpExt:"));
    let (names, values) = (lines.next().unwrap(), lines.next().unwrap());
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(name, _)| *name == "ListenOverflows")
        .map(|(_, value)| value.parse().unwrap())
        .expect("ListenOverflows in /proc/net/netstat")
}

/// The backlog of the socket listening on 127.0.0.1:`port`, as `ss`
/// reports it (the Send-Q of a listening socket).
fn listen_backlog(port: u16) -> u32 {
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2) is needed to read a listening socket's backlog");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .next()
        .unwrap_or_else(|| panic!("no listener on {port}: {text:?}"));
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}

/// Listeners are bound with an explicit backlog (by default 4096, or
/// `net.core.somaxconn` when lower), and bursts of connections are all
/// accepted with no listen queue overflowing: 2,000 connections in bursts
/// of 500 on loopback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_connections_are_all_accepted() {
    const BURSTS: usize = 4;
    const BURST: usize = 500;
    let web = Backend::start("web").await;
    let (proxy, port) = proxy_for(service("web", pb::LbPolicy::RoundRobin), &web).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(listen_backlog(port), somaxconn.min(4096));

    let open = |proxy: &Proxy| -> u64 {
        proxy
            .metrics()
            .lines()
            .filter(|l| l.starts_with("switchyard_agent_proxy_open_connections{listener=\"front\""))
            .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
            .sum()
    };
    eventually(|| open(&proxy) == 0).await;
    let before = listen_overflows();
    for burst in 0..BURSTS {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..BURST {
            connecting.spawn(tokio::net::TcpStream::connect(("127.0.0.1", port)));
        }
        let mut clients = Vec::with_capacity(BURST);
        while let Some(connected) = connecting.join_next().await {
            clients.push(connected.unwrap().expect("connected"));
        }
        assert!(
            eventually(|| open(&proxy) == BURST as u64).await,
            "burst {burst}: {} of {BURST} connections accepted",
            open(&proxy)
        );
        drop(clients);
        assert!(
            eventually(|| open(&proxy) == 0).await,
            "burst {burst} closed"
        );
    }
    let overflows = listen_overflows() - before;
    assert_eq!(
        overflows, 0,
        "{overflows} connections overflowed a listen queue during {BURSTS} bursts of {BURST}"
    );
    proxy.stop().await;

    // A backlog set on the proxy (`--listen-backlog`) is the listeners'.
    let port = free_port();
    let snap = web_snapshot(
        service("web", pb::LbPolicy::RoundRobin),
        vec![endpoint("web-1", "web", web.addr, 1, &[])],
        port,
    );
    let proxy = Proxy::start_with(Builtin::new().with_backlog(100), config(1, snap)).await;
    assert_eq!(listen_backlog(port), 100);
    proxy.stop().await;
}

/// The request line's version and target, read as RFC 9112 says: a later
/// HTTP/1 minor version is served as HTTP/1.1 (§2.3), another major
/// version is answered 505, and a request line that does not have three
/// parts (a space inside the target) is malformed: 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_line_versions_and_targets_are_read_as_rfc_9112_says() {
    let web = Backend::start("web").await;
    let (proxy, port) = proxy_for(service("web", pb::LbPolicy::RoundRobin), &web).await;
    let exchange = async |request: &str| {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut answer))
            .await
            .expect("answered, then closed")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    };

    // Two requests on one connection: HTTP/1.2 keeps it alive as 1.1 does.
    let answer = exchange(
        "GET /a HTTP/1.2\r\nhost: web\r\n\r\nGET /b HTTP/1.2\r\nhost: web\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(
        answer.matches("HTTP/1.1 200 OK\r\n").count(),
        2,
        "{answer:?}"
    );
    assert!(answer.contains("\r\nx-path: /a\r\n"), "{answer:?}");
    assert!(answer.contains("\r\nx-path: /b\r\n"), "{answer:?}");
    assert_eq!(web.hits.load(Ordering::Relaxed), 2);

    for (request, status) in [
        ("GET /a b HTTP/1.1\r\nhost: web\r\n\r\n", "400"),
        ("GET /a  HTTP/1.1\r\nhost: web\r\n\r\n", "400"),
        ("GET / HTTP/2.0\r\nhost: web\r\n\r\n", "505"),
        ("GET / HTTP/3.0\r\nhost: web\r\n\r\n", "505"),
    ] {
        let answer = exchange(request).await;
        assert!(
            answer.starts_with(&format!("HTTP/1.1 {status} ")),
            "{request:?}: {answer:?}"
        );
    }
    assert_eq!(
        web.hits.load(Ordering::Relaxed),
        2,
        "none reached the endpoint"
    );
    proxy.stop().await;
}

/// A request body whose framing breaks after its head has gone to the
/// endpoint (a bad chunk-size line, a bare LF, a chunk longer than
/// announced, a malformed trailer, a body cut short by the client) is
/// answered 400 at once and its client connection closed; the endpoint's
/// connection (HTTP/1.1) is closed, never reused; the request is not
/// retried, is counted as an invalid request, and is not held against the
/// endpoint (which one failure would eject).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_body_that_breaks_is_refused_without_blaming_the_endpoint() {
    let chunked =
        "POST /collect HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n";
    let cases: [(&str, String, bool); 9] = [
        ("chunk size zz", format!("{chunked}zz\r\n"), false),
        (
            "chunk size 0x1",
            format!("{chunked}0x1\r\nx\r\n0\r\n\r\n"),
            false,
        ),
        ("negative chunk size", format!("{chunked}-1\r\n"), false),
        (
            "overflowing chunk size",
            format!("{chunked}10000000000000000\r\n"),
            false,
        ),
        ("bare LF", format!("{chunked}5\nworld\r\n0\r\n\r\n"), false),
        (
            "chunk longer than announced",
            format!("{chunked}3\r\nworld\r\n0\r\n\r\n"),
            false,
        ),
        (
            "malformed trailer",
            format!("{chunked}0\r\nno colon\r\n\r\n"),
            false,
        ),
        (
            "bare LF in a trailer",
            format!("{chunked}0\r\nx-t: 1\n\r\n"),
            false,
        ),
        (
            "content-length body cut short",
            "POST /collect HTTP/1.1\r\nhost: web\r\ncontent-length: 100\r\n\r\n0123456789".into(),
            true,
        ),
    ];
    for protocol in [pb::Protocol::Http, pb::Protocol::Http2] {
        let web = Backend::start("web").await;
        let svc = pb::Service {
            protocol: protocol as i32,
            outlier_detection: Some(pb::OutlierDetection {
                consecutive_5xx: 1,
                consecutive_connect_failures: 1,
                max_ejection_percent: 100,
                base_ejection_time: millis(60_000),
                ..Default::default()
            }),
            ..service("web", pb::LbPolicy::RoundRobin)
        };
        let (proxy, port) = proxy_for(svc, &web).await;
        for (n, (name, request, shutdown)) in cases.iter().enumerate() {
            let what = format!("{protocol:?}, {name}");
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .unwrap();
            conn.write_all(request.as_bytes()).await.unwrap();
            if *shutdown {
                conn.shutdown().await.unwrap();
            }
            let mut answer = Vec::new();
            tokio::time::timeout(Duration::from_secs(5), conn.read_to_end(&mut answer))
                .await
                .unwrap_or_else(|_| panic!("{what}: no answer within 5 s"))
                .unwrap();
            let answer = String::from_utf8_lossy(&answer);
            assert!(answer.starts_with("HTTP/1.1 400 "), "{what}: {answer:?}");
            assert_eq!(answer.matches("HTTP/1.1").count(), 1, "{what}: {answer:?}");
            assert!(
                eventually(|| web.hits.load(Ordering::Relaxed) == n as u64 + 1).await,
                "{what}: the head reached the endpoint once, and was not sent again: {} hits",
                web.hits.load(Ordering::Relaxed)
            );
            if protocol == pb::Protocol::Http {
                assert!(
                    eventually(|| web.closed.load(Ordering::Relaxed) == n as u64 + 1).await,
                    "{what}: the endpoint's connection was closed"
                );
                assert_eq!(
                    web.connections.load(Ordering::Relaxed),
                    n as u64 + 1,
                    "{what}: a new endpoint connection for each request"
                );
            }
        }
        // Once the answer has begun (an echo), the body breaking off
        // closes the connection, the answer unfinished.
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        conn.write_all(
            b"POST /echo HTTP/1.1\r\nhost: web\r\ntransfer-encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .await
        .unwrap();
        let mut got = Vec::new();
        read_until(&mut conn, &mut got, "hello").await;
        conn.write_all(b"zz\r\n").await.unwrap();
        let mut rest = [0u8; 1024];
        loop {
            match tokio::time::timeout(Duration::from_secs(5), conn.read(&mut rest)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => got.extend_from_slice(&rest[..n]),
                Err(_) => panic!("{protocol:?}: the echo's connection stays open"),
            }
        }
        let answer = String::from_utf8_lossy(&got);
        assert!(
            answer.starts_with("HTTP/1.1 200 OK\r\n"),
            "{protocol:?}: {answer:?}"
        );
        assert!(
            !answer.ends_with("0\r\n\r\n"),
            "{protocol:?}: unfinished: {answer:?}"
        );

        // The endpoint was not blamed (one failure would have ejected it
        // for a minute): it still gets requests.
        let a = get(&client(), &format!("http://127.0.0.1:{port}/"), &[]).await;
        assert_eq!(a.status, 200, "{protocol:?}: then {}", a.body);
        let metrics = proxy.metrics();
        let invalid = format!(
            "switchyard_agent_proxy_errors_total{{listener=\"front\",reason=\"invalid_request\"}} {}",
            cases.len() + 1
        );
        assert!(metrics.contains(&invalid), "{protocol:?}: {metrics}");
        assert!(
            !metrics.contains("switchyard_agent_proxy_upstream_failures_total{"),
            "{protocol:?}: {metrics}"
        );
        proxy.stop().await;
    }
}
