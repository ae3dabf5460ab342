//! End to end, the agent's DNS interface over real sockets with real DNS
//! clients: a real control plane, real agents (one owning and checking the
//! backends, one answering DNS for a client node), real backends on
//! loopback addresses (127.0.0.x and ::1), and questions asked with
//! hickory's message codec over UDP and TCP, with `dig` and with Python's
//! dnspython (those two are run by scripts/test, which installs them).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use switchyard::pb;
use switchyard_agent::dns;
use switchyard_control_plane::testing::fixtures::{item, service};
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

mod common;
use common::*;

/// Upper bound on any one wait.
const WAIT: Duration = Duration::from_secs(15);

/// A backend: a TCP listener on `ip:port` counting the connections it
/// accepts (each closed at once), until killed.
struct Backend {
    ip: IpAddr,
    port: u16,
    accepted: Arc<AtomicU64>,
    task: Option<JoinHandle<()>>,
}

impl Backend {
    async fn start(ip: &str, port: u16) -> std::io::Result<Backend> {
        let ip: IpAddr = ip.parse().unwrap();
        let listener = tokio::net::TcpListener::bind((ip, port)).await?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicU64::new(0));
        let count = accepted.clone();
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::Relaxed);
                drop(conn);
            }
        });
        Ok(Backend {
            ip,
            port,
            accepted,
            task: Some(task),
        })
    }

    /// Three backends on 127.0.0.1, .2 and .3, on one port.
    async fn three() -> Vec<Backend> {
        for _ in 0..50 {
            let first = Backend::start("127.0.0.1", 0).await.unwrap();
            let port = first.port;
            let (Ok(second), Ok(third)) = (
                Backend::start("127.0.0.2", port).await,
                Backend::start("127.0.0.3", port).await,
            ) else {
                continue;
            };
            return vec![first, second, third];
        }
        panic!("no port free on 127.0.0.1-3");
    }

    /// Stops listening: connections are refused from now on.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same address.
    async fn restart(&mut self) {
        let mut again = Backend::start(&self.ip.to_string(), self.port)
            .await
            .unwrap();
        self.accepted = again.accepted.clone();
        self.task = again.task.take();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

fn millis(ms: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration {
        seconds: 0,
        nanos: ms * 1_000_000,
    })
}

/// A TCP health check every 200 ms (timeout 150 ms, fall 2, rise 2).
fn tcp_check() -> Option<pb::HealthCheck> {
    Some(pb::HealthCheck {
        interval: millis(200),
        timeout: millis(150),
        healthy_threshold: 2,
        unhealthy_threshold: 2,
        check: Some(pb::health_check::Check::Tcp(pb::TcpHealthCheck {})),
    })
}

/// Service `name` with a TCP health check, behind a TCP listener on
/// 127.0.0.1:`listen` that only `role=client` nodes open; its endpoints
/// `(name, address, port, weight)` are owned (and checked) by node
/// `backends`.
fn checked_service(
    name: &str,
    listen: u16,
    endpoints: &[(&str, &str, u16, u32)],
) -> Vec<pb::ApplyItem> {
    let mut items = vec![item(pb::resource::Kind::Service(pb::Service {
        name: name.into(),
        protocol: pb::Protocol::Tcp as i32,
        health_check: tcp_check(),
        ..Default::default()
    }))];
    for (e, address, port, weight) in endpoints {
        items.push(item(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: (*e).into(),
            service: name.into(),
            address: (*address).into(),
            port: u32::from(*port),
            weight: *weight,
            node: "backends".into(),
            ..Default::default()
        })));
    }
    items.push(front(name, listen));
    items
}

/// A TCP listener in front of `service` for `role=client` nodes.
fn front(service: &str, listen: u16) -> pb::ApplyItem {
    item(pb::resource::Kind::Listener(pb::Listener {
        name: format!("front-{service}"),
        address: "127.0.0.1".into(),
        port: u32::from(listen),
        protocol: pb::Protocol::Tcp as i32,
        target: Some(pb::listener::Target::Service(service.into())),
        node_selector: BTreeMap::from([("role".into(), "client".into())]),
        ..Default::default()
    }))
}

/// Service `name` with `n` endpoints on 127.0.2.1.. owned by no node (so
/// `unknown`, routable), behind a listener for clients.
fn unchecked_service(name: &str, listen: u16, n: u8) -> Vec<pb::ApplyItem> {
    let mut items = vec![item(service(name))];
    for i in 1..=n {
        items.push(item(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: format!("{name}-{i}"),
            service: name.into(),
            address: format!("127.0.2.{i}"),
            port: 9000,
            ..Default::default()
        })));
    }
    items.push(front(name, listen));
    items
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

/// The DNS interface of an in-process agent, as `switchyard-agent` runs it.
struct Dns {
    addr: SocketAddr,
    stats: Arc<dns::Stats>,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Dns {
    /// For a node labelled `role=client`.
    async fn start(agent: &TestAgent, node: &str, config: dns::Config) -> Dns {
        let labels = BTreeMap::from([("role".to_string(), "client".to_string())]);
        Dns::start_labelled(agent, node, labels, config).await
    }

    async fn start_labelled(
        agent: &TestAgent,
        node: &str,
        labels: BTreeMap<String, String>,
        config: dns::Config,
    ) -> Dns {
        Dns::start_full(agent, node, labels, config, None).await
    }

    /// For a node labelled `role=client` whose built-in proxy ejects
    /// endpoints into `outliers`.
    async fn start_with_outliers(
        agent: &TestAgent,
        node: &str,
        outliers: switchyard_proxy::Outliers,
    ) -> Dns {
        let labels = BTreeMap::from([("role".to_string(), "client".to_string())]);
        Dns::start_full(agent, node, labels, dns::Config::default(), Some(outliers)).await
    }

    async fn start_full(
        agent: &TestAgent,
        node: &str,
        labels: BTreeMap<String, String>,
        config: dns::Config,
        outliers: Option<switchyard_proxy::Outliers>,
    ) -> Dns {
        let sockets = dns::Sockets::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = sockets.local_addr().unwrap();
        let stats = Arc::new(dns::Stats::default());
        let stop = CancellationToken::new();
        let sources = dns::Sources {
            config: agent.agent.config(),
            health: agent.agent.health(),
            node_id: node.into(),
            labels,
            outliers,
        };
        let task = tokio::spawn(dns::serve(
            sockets,
            config,
            sources,
            stats.clone(),
            stop.clone(),
        ));
        Dns {
            addr,
            stats,
            stop,
            task,
        }
    }

    async fn stop(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// How a question is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Via {
    /// UDP with EDNS (a 1232-byte buffer), as dig and most stubs ask.
    Udp,
    /// UDP without EDNS: answers are limited to 512 bytes.
    UdpPlain,
    /// TCP.
    Tcp,
}

/// One question to `server`; the answer.
async fn ask(server: SocketAddr, name: &str, qtype: RecordType, via: Via) -> Message {
    let mut query = Message::new(fastrand::u16(..), MessageType::Query, OpCode::Query);
    query.metadata.recursion_desired = true;
    query.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
    if via != Via::UdpPlain {
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        query.set_edns(edns);
    }
    let bytes = query.to_vec().unwrap();
    let answer = tokio::time::timeout(Duration::from_secs(5), exchange(server, &bytes, via))
        .await
        .unwrap_or_else(|_| panic!("no answer to {name} {qtype} over {via:?}"))
        .unwrap_or_else(|e| panic!("{name} {qtype} over {via:?}: {e}"));
    let message = Message::from_vec(&answer).expect("a well-formed answer");
    assert_eq!(message.metadata.id, query.metadata.id);
    assert_eq!(message.metadata.message_type, MessageType::Response);
    message
}

/// Sends `bytes` as one message; the bytes of the answer.
async fn exchange(server: SocketAddr, bytes: &[u8], via: Via) -> std::io::Result<Vec<u8>> {
    match via {
        Via::Udp | Via::UdpPlain => {
            let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
            socket.send_to(bytes, server).await?;
            let mut buf = vec![0; 65535];
            let (n, _) = socket.recv_from(&mut buf).await?;
            buf.truncate(n);
            Ok(buf)
        }
        Via::Tcp => {
            let mut s = tokio::net::TcpStream::connect(server).await?;
            let len = u16::try_from(bytes.len()).unwrap().to_be_bytes();
            s.write_all(&[&len[..], bytes].concat()).await?;
            let mut len = [0u8; 2];
            s.read_exact(&mut len).await?;
            let mut buf = vec![0; usize::from(u16::from_be_bytes(len))];
            s.read_exact(&mut buf).await?;
            Ok(buf)
        }
    }
}

/// The addresses in an answer section, in order.
fn ips(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
}

/// Whether the authority section holds the zone's SOA.
fn has_soa(m: &Message) -> bool {
    m.authorities
        .iter()
        .any(|r| matches!(r.data, RData::SOA(_)) && r.name.to_string() == "switchyard.")
}

/// Asks until `done` holds of the answer (at most [`WAIT`]); the time it took.
async fn until_answer(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    what: &str,
    done: impl Fn(&Message) -> bool,
) -> Duration {
    let started = Instant::now();
    loop {
        let m = ask(server, name, qtype, Via::Udp).await;
        if done(&m) {
            return started.elapsed();
        }
        assert!(started.elapsed() < WAIT, "never: {what}; last answer {m:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Acceptance 1: the healthy endpoints, rotated on every answer; SRV with
/// ports and weights and the addresses in the additional section; AAAA for
/// an IPv6 endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_endpoints_rotate_with_srv_and_aaaa() {
    let backends = Backend::three().await;
    let v6 = Backend::start("::1", 0).await.unwrap();
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let port = backends[0].port;
    let mut items = checked_service(
        "api",
        free_port(),
        &[
            ("api-1", "127.0.0.1", port, 1),
            ("api-2", "127.0.0.2", port, 2),
            ("api-3", "127.0.0.3", port, 3),
        ],
    );
    items.extend(checked_service(
        "api6",
        free_port(),
        &[("api6-1", "::1", v6.port, 1)],
    ));
    apply(&url, items).await;
    let owner = agent("backends", "backend", &url).await;
    let client = agent("client-1", "client", &url).await;
    let dns = Dns::start(&client, "client-1", dns::Config::default()).await;
    until_answer(
        dns.addr,
        "api.service.switchyard.",
        RecordType::A,
        "3 healthy",
        |m| ips(m).len() == 3,
    )
    .await;
    client
        .until("all healthy", |c| {
            c.endpoints
                .values()
                .all(|e| e.health == switchyard::resource::Health::Healthy)
        })
        .await;

    // Round robin: the first record moves by one endpoint per answer
    // (the weights 1, 2, 3 order the first position: over a period of 6
    // answers, api-3 comes first 3 times, api-2 twice, api-1 once).
    let mut firsts = BTreeMap::<IpAddr, usize>::new();
    for _ in 0..60 {
        let m = ask(dns.addr, "api.service.switchyard.", RecordType::A, Via::Udp).await;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.metadata.authoritative);
        let got = ips(&m);
        assert_eq!(
            got.iter().collect::<BTreeSet<_>>(),
            [ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")]
                .iter()
                .collect(),
        );
        assert!(m.answers.iter().all(|r| r.ttl == dns::DEFAULT_TTL));
        *firsts.entry(got[0]).or_default() += 1;
    }
    eprintln!("first record over 60 answers: {firsts:?}");
    assert_eq!(firsts[&ip("127.0.0.1")], 10, "{firsts:?}");
    assert_eq!(firsts[&ip("127.0.0.2")], 20, "{firsts:?}");
    assert_eq!(firsts[&ip("127.0.0.3")], 30, "{firsts:?}");

    let srv = ask(
        dns.addr,
        "api.service.switchyard.",
        RecordType::SRV,
        Via::Udp,
    )
    .await;
    let mut got: Vec<(u16, u16)> = srv
        .answers
        .iter()
        .map(|r| match &r.data {
            RData::SRV(s) => (s.weight, s.port),
            other => panic!("{other:?}"),
        })
        .collect();
    got.sort();
    assert_eq!(got, [(1, port), (2, port), (3, port)]);
    let mut extra: Vec<IpAddr> = srv
        .additionals
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            _ => None,
        })
        .collect();
    extra.sort();
    assert_eq!(extra, [ip("127.0.0.1"), ip("127.0.0.2"), ip("127.0.0.3")]);

    until_answer(
        dns.addr,
        "api6.service.switchyard.",
        RecordType::AAAA,
        "::1",
        |m| ips(m) == [ip("::1")],
    )
    .await;
    let a_of_v6 = ask(
        dns.addr,
        "api6.service.switchyard.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert!(a_of_v6.answers.is_empty() && has_soa(&a_of_v6));
    assert!(dns.stats.count("A", "NOERROR") >= 60);

    dns.stop().await;
    owner.agent.stop().await.unwrap();
    client.agent.stop().await.unwrap();
    server.stop().await;
}

/// Acceptance 2: a backend dies; once its agent's check marks it
/// unhealthy, it is out of the answers within a second, and back once it
/// is healthy again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unhealthy_endpoint_leaves_the_answers_within_a_second() {
    let mut backends = Backend::three().await;
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let port = backends[0].port;
    apply(
        &url,
        checked_service(
            "api",
            free_port(),
            &[
                ("api-1", "127.0.0.1", port, 1),
                ("api-2", "127.0.0.2", port, 1),
                ("api-3", "127.0.0.3", port, 1),
            ],
        ),
    )
    .await;
    let owner = agent("backends", "backend", &url).await;
    let client = agent("client-1", "client", &url).await;
    let dns = Dns::start(&client, "client-1", dns::Config::default()).await;
    client
        .until("all healthy", |c| {
            c.endpoints.len() == 3
                && c.endpoints
                    .values()
                    .all(|e| e.health == switchyard::resource::Health::Healthy)
        })
        .await;
    let name = "api.service.switchyard.";
    until_answer(dns.addr, name, RecordType::A, "3 endpoints", |m| {
        ips(m).len() == 3
    })
    .await;

    backends[1].kill().await;
    let killed = Instant::now();
    let mut health = owner.agent.health();
    tokio::time::timeout(
        WAIT,
        health.wait_for(|r| {
            r.get("api-2")
                .is_some_and(|o| o.health == pb::Health::Unhealthy)
        }),
    )
    .await
    .expect("the check never marked api-2 unhealthy")
    .unwrap();
    let marked = Instant::now();
    drop(health);
    until_answer(dns.addr, name, RecordType::A, "api-2 gone", |m| {
        ips(m).len() == 2 && !ips(m).contains(&ip("127.0.0.2"))
    })
    .await;
    let gone = Instant::now();
    // Gone for good while it is down.
    for _ in 0..20 {
        let m = ask(dns.addr, name, RecordType::A, Via::Udp).await;
        assert!(!ips(&m).contains(&ip("127.0.0.2")));
    }
    eprintln!(
        "backend killed -> marked unhealthy: {:?}; marked -> out of DNS answers: {:?}; \
         killed -> out: {:?}",
        marked - killed,
        gone - marked,
        gone - killed
    );
    assert!(
        gone - marked < Duration::from_secs(1),
        "{:?}",
        gone - marked
    );
    // interval × fall + timeout + 1 s, the interval with its 10% jitter.
    assert!(
        gone - killed < Duration::from_millis(2 * 220 + 150 + 1000),
        "{:?}",
        gone - killed
    );

    backends[1].restart().await;
    let back = until_answer(dns.addr, name, RecordType::A, "api-2 back", |m| {
        ips(m).contains(&ip("127.0.0.2"))
    })
    .await;
    eprintln!("backend restarted -> back in DNS answers: {back:?}");

    dns.stop().await;
    owner.agent.stop().await.unwrap();
    client.agent.stop().await.unwrap();
    server.stop().await;
}

/// Acceptance 3: NXDOMAIN for an unknown service, an empty NOERROR with
/// the SOA for a known service with no routable endpoint, REFUSED outside
/// the domain, and an answer too large for UDP truncated (TC) and whole
/// over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answer_codes_and_truncation() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    // `down`'s one endpoint is checked on a port nothing listens on.
    let dead = free_port();
    let mut items = checked_service("down", free_port(), &[("down-1", "127.0.0.1", dead, 1)]);
    items.extend(unchecked_service("big", free_port(), 40));
    apply(&url, items).await;
    let owner = agent("backends", "backend", &url).await;
    let client = agent("client-1", "client", &url).await;
    let config = dns::Config {
        record_limit: 64,
        ..dns::Config::default()
    };
    let dns = Dns::start(&client, "client-1", config).await;
    client
        .until("down-1 unhealthy", |c| {
            c.endpoints
                .get("down-1")
                .is_some_and(|e| e.health == switchyard::resource::Health::Unhealthy)
        })
        .await;
    until_answer(
        dns.addr,
        "big.service.switchyard.",
        RecordType::A,
        "big",
        |m| !m.answers.is_empty(),
    )
    .await;

    for via in [Via::Udp, Via::Tcp] {
        let nx = ask(dns.addr, "nope.service.switchyard.", RecordType::A, via).await;
        assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
        assert!(nx.answers.is_empty() && has_soa(&nx), "{nx:?}");

        let empty = ask(dns.addr, "down.service.switchyard.", RecordType::A, via).await;
        assert_eq!(empty.metadata.response_code, ResponseCode::NoError);
        assert!(empty.answers.is_empty() && has_soa(&empty), "{empty:?}");

        let refused = ask(dns.addr, "example.com.", RecordType::A, via).await;
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        assert!(refused.answers.is_empty() && refused.authorities.is_empty());
        assert!(!refused.metadata.recursion_available);
    }

    // 40 A records: 700 bytes, over the 512 of plain UDP.
    let udp = ask(
        dns.addr,
        "big.service.switchyard.",
        RecordType::A,
        Via::UdpPlain,
    )
    .await;
    assert!(udp.metadata.truncation, "TC set over plain UDP");
    assert!(udp.answers.len() < 40, "{}", udp.answers.len());
    let tcp = ask(dns.addr, "big.service.switchyard.", RecordType::A, Via::Tcp).await;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 40);
    // With EDNS (1232 bytes) it fits in one datagram.
    let edns = ask(dns.addr, "big.service.switchyard.", RecordType::A, Via::Udp).await;
    assert!(!edns.metadata.truncation);
    assert_eq!(edns.answers.len(), 40);
    // The limit holds over TCP too.
    let dns8 = Dns::start(&client, "client-1", dns::Config::default()).await;
    let limited = ask(
        dns8.addr,
        "big.service.switchyard.",
        RecordType::A,
        Via::Tcp,
    )
    .await;
    assert_eq!(limited.answers.len(), dns::DEFAULT_RECORD_LIMIT);
    // Names are case-insensitive.
    let mixed = ask(
        dns8.addr,
        "BIG.Service.SwitchYard.",
        RecordType::A,
        Via::Udp,
    )
    .await;
    assert_eq!(mixed.answers.len(), dns::DEFAULT_RECORD_LIMIT);
    assert!(dns.stats.count("A", "NXDOMAIN") >= 2);
    assert!(dns.stats.count("A", "REFUSED") >= 2);

    dns8.stop().await;
    dns.stop().await;
    owner.agent.stop().await.unwrap();
    client.agent.stop().await.unwrap();
    server.stop().await;
}

/// Acceptance 6: random bytes, truncated headers, compression loops and
/// other malformed messages, over UDP and TCP, never crash or stall the
/// server: each batch is followed by a question that must be answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_never_stall_the_server() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    apply(&url, unchecked_service("big", free_port(), 3)).await;
    let client = agent("client-1", "client", &url).await;
    let dns = Dns::start(&client, "client-1", dns::Config::default()).await;
    let name = "big.service.switchyard.";
    until_answer(dns.addr, name, RecordType::A, "big", |m| ips(m).len() == 3).await;

    let header = |qdcount: u16| -> Vec<u8> {
        let mut h = vec![0x12, 0x34, 0x01, 0x00];
        h.extend(qdcount.to_be_bytes());
        h.extend([0, 0, 0, 0, 0, 0]);
        h
    };
    let mut bad: Vec<Vec<u8>> = vec![
        vec![],
        vec![0],
        header(1)[..11].to_vec(),
        // One question promised, none there.
        header(1),
        // 65535 questions promised.
        header(u16::MAX),
        // A name that points at itself.
        [header(1), vec![0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]].concat(),
        // Two pointers pointing at each other.
        [
            header(1),
            vec![0xc0, 0x0e, 0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01],
        ]
        .concat(),
        // A pointer past the end.
        [header(1), vec![0xc0, 0xff, 0x00, 0x01, 0x00, 0x01]].concat(),
        // A label longer than the message.
        [header(1), vec![0x3f, b'a', b'b']].concat(),
        // A response (QR set): never answered.
        [vec![0x12, 0x34, 0x81, 0x00], header(0)[4..].to_vec()].concat(),
        // Two questions.
        {
            let mut m = header(2);
            for _ in 0..2 {
                m.extend([3, b'b', b'i', b'g', 0, 0, 1, 0, 1]);
            }
            m
        },
    ];
    let mut rng = fastrand::Rng::with_seed(20);
    for _ in 0..500 {
        let len = rng.usize(0..600);
        bad.push((0..len).map(|_| rng.u8(..)).collect());
    }
    // Random bytes behind a valid header: the question parser's turn.
    for _ in 0..500 {
        let len = rng.usize(0..100);
        bad.push([header(1), (0..len).map(|_| rng.u8(..)).collect()].concat());
    }

    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    for (i, packet) in bad.iter().enumerate() {
        udp.send_to(packet, dns.addr).await.unwrap();
        if i % 100 == 0 {
            let m = ask(dns.addr, name, RecordType::A, Via::Udp).await;
            assert_eq!(ips(&m).len(), 3, "after {i} malformed datagrams");
        }
    }
    // Every malformed message on its own TCP connection, and all of them
    // on one; then frames that promise more than they send.
    for packet in bad.iter().take(200) {
        let mut s = tokio::net::TcpStream::connect(dns.addr).await.unwrap();
        let len = (packet.len() as u16).to_be_bytes();
        let _ = s.write_all(&[&len[..], packet].concat()).await;
        drop(s);
    }
    let mut s = tokio::net::TcpStream::connect(dns.addr).await.unwrap();
    for packet in &bad {
        let len = (packet.len() as u16).to_be_bytes();
        if s.write_all(&[&len[..], packet].concat()).await.is_err() {
            break;
        }
    }
    drop(s);
    for frame in [vec![0xff, 0xff, 1, 2, 3], vec![0x00], vec![0x00, 0x0c, 1]] {
        let mut s = tokio::net::TcpStream::connect(dns.addr).await.unwrap();
        s.write_all(&frame).await.unwrap();
        drop(s);
    }
    for via in [Via::Udp, Via::UdpPlain, Via::Tcp] {
        let m = ask(dns.addr, name, RecordType::A, via).await;
        assert_eq!(
            ips(&m).len(),
            3,
            "over {via:?} after the malformed messages"
        );
    }
    assert!(!dns.task.is_finished(), "the server is still running");

    dns.stop().await;
    client.agent.stop().await.unwrap();
    server.stop().await;
}

/// Acceptance 4: a client that resolves through the agent before each
/// connection and connects to the first address (client-side DNS round
/// robin) spreads 300 connections over 3 endpoints within ±15%.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_side_round_robin_spreads_connections() {
    let backends = Backend::three().await;
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let port = backends[0].port;
    apply(
        &url,
        checked_service(
            "api",
            free_port(),
            &[
                ("api-1", "127.0.0.1", port, 1),
                ("api-2", "127.0.0.2", port, 1),
                ("api-3", "127.0.0.3", port, 1),
            ],
        ),
    )
    .await;
    let owner = agent("backends", "backend", &url).await;
    let client = agent("client-1", "client", &url).await;
    let dns = Dns::start(&client, "client-1", dns::Config::default()).await;
    let name = "api.service.switchyard.";
    until_answer(dns.addr, name, RecordType::A, "3 healthy", |m| {
        ips(m).len() == 3
    })
    .await;
    client
        .until("all healthy", |c| {
            c.endpoints
                .values()
                .all(|e| e.health == switchyard::resource::Health::Healthy)
        })
        .await;
    // The owner's health checks connect too: counted apart.
    let checks = owner.agent.checks();
    let runs = || -> Vec<u64> {
        let all: BTreeMap<String, u64> = checks
            .all()
            .into_iter()
            .map(|(n, c)| (n, c.runs.load(Ordering::Relaxed)))
            .collect();
        ["api-1", "api-2", "api-3"]
            .iter()
            .map(|n| all[*n])
            .collect()
    };
    let accepted = || -> Vec<u64> {
        backends
            .iter()
            .map(|b| b.accepted.load(Ordering::Relaxed))
            .collect()
    };
    let (accepted_before, runs_before) = (accepted(), runs());
    for _ in 0..300 {
        let m = ask(dns.addr, name, RecordType::A, Via::Udp).await;
        let first = ips(&m)[0];
        tokio::net::TcpStream::connect((first, port)).await.unwrap();
    }
    // The endpoints' counts, less their health checks, until all 300
    // connections are accepted (or the wait ends).
    let spread = || -> Vec<u64> {
        let (accepted_after, runs_after) = (accepted(), runs());
        (0..3)
            .map(|i| {
                (accepted_after[i] - accepted_before[i])
                    .saturating_sub(runs_after[i] - runs_before[i])
            })
            .collect()
    };
    let deadline = Instant::now() + WAIT;
    let spread = loop {
        let spread = spread();
        if spread.iter().sum::<u64>() == 300 || Instant::now() > deadline {
            break spread;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!("300 connections after DNS round robin, by endpoint: {spread:?}");
    assert_eq!(spread.iter().sum::<u64>(), 300, "{spread:?}");
    for (i, n) in spread.iter().enumerate() {
        assert!(
            (85..=115).contains(n),
            "endpoint {i}: {n} of 300: {spread:?}"
        );
    }

    dns.stop().await;
    owner.agent.stop().await.unwrap();
    client.agent.stop().await.unwrap();
    server.stop().await;
}

/// Acceptance 2 (outage): every control plane down, `switchyard-agent`
/// keeps answering from its last configuration; its metrics count the
/// questions; and its log holds no line per question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_keep_coming_with_every_control_plane_down() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    apply(&url, unchecked_service("big", free_port(), 3)).await;

    let bin = switchyard_control_plane::testing::cp_binary().with_file_name("switchyard-agent");
    let dir = TempDir::new();
    let log = dir.path().join("agent.log");
    let data_dir = dir.path().join("data");
    let metrics_port = free_port();
    let dns_addr: SocketAddr = {
        // A port free for UDP and TCP, released for the agent to take.
        let sockets = dns::Sockets::bind("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        sockets.local_addr().unwrap()
    };
    let mut agent = tokio::process::Command::new(&bin)
        .args(["--node-id", "client-1", "--label", "role=client"])
        .args(["--control-plane", &url])
        .arg("--data-dir")
        .arg(&data_dir)
        .args(["--metrics-listen", &format!("127.0.0.1:{metrics_port}")])
        .args(["--api-listen", "off", "--proxy-threads", "1"])
        .args(["--dns-listen", &dns_addr.to_string(), "--dns-ttl", "1"])
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn switchyard-agent");
    let name = "big.service.switchyard.";
    let started = Instant::now();
    loop {
        let m = tokio::time::timeout(
            Duration::from_millis(500),
            exchange_question(dns_addr, name),
        )
        .await;
        if let Ok(Ok(m)) = m
            && ips(&m).len() == 3
        {
            assert!(m.answers.iter().all(|r| r.ttl == 1), "--dns-ttl 1");
            break;
        }
        assert!(started.elapsed() < WAIT, "the agent never answered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    server.stop().await;
    let stopped = Instant::now();
    let mut answered = 0;
    while stopped.elapsed() < Duration::from_secs(2) {
        let m = ask(dns_addr, name, RecordType::A, Via::Udp).await;
        assert_eq!(ips(&m).len(), 3, "answers from the last configuration");
        answered += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("{answered} answers in the 2 s after the control plane stopped");

    let metrics = switchyard_control_plane::testing::scrape(
        format!("127.0.0.1:{metrics_port}").parse().unwrap(),
    )
    .await;
    let line = metrics
        .lines()
        .find(|l| l.starts_with(r#"switchyard_agent_dns_answers_total{type="A",rcode="NOERROR"}"#))
        .expect("the DNS answer counter");
    let count: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(count >= answered, "{line}");
    assert!(metrics.contains("switchyard_agent_dns_answer_seconds_bucket"));

    agent.kill().await.unwrap();
    let log = std::fs::read_to_string(&log).unwrap();
    assert!(log.contains("serving DNS"), "{log}");
    assert!(
        !log.contains("request:"),
        "no line per question in the log:\n{log}"
    );
}

/// One A question over UDP, for a server that may not be up yet.
async fn exchange_question(server: SocketAddr, name: &str) -> std::io::Result<Message> {
    let mut query = Message::new(1, MessageType::Query, OpCode::Query);
    query.add_query(Query::query(Name::from_str(name).unwrap(), RecordType::A));
    let answer = exchange(server, &query.to_vec().unwrap(), Via::Udp).await?;
    Message::from_vec(&answer).map_err(std::io::Error::other)
}

/// The programs of the real-client test: `dig` (bind9-dnsutils) and
/// dnspython in the test virtualenv; scripts/test installs both.
const DNSPYTHON: &str = r#"
import json, sys
import dns.flags, dns.message, dns.query, dns.rcode, dns.rdatatype, dns.resolver
port = int(sys.argv[1])
r = dns.resolver.Resolver(configure=False)
r.nameservers = ["127.0.0.1"]
r.port = port
out = {}
out["firsts"] = [r.resolve("api.service.switchyard.", "A")[0].address for _ in range(6)]
out["all"] = sorted(a.address for a in r.resolve("api.service.switchyard.", "A"))
out["srv"] = sorted([s.port, s.weight, str(s.target)] for s in r.resolve("api.service.switchyard.", "SRV"))
out["aaaa"] = [a.address for a in r.resolve("v6.service.switchyard.", "AAAA")]
def rcode(name):
    q = dns.message.make_query(name, "A")
    return dns.rcode.to_text(dns.query.udp(q, "127.0.0.1", port=port, timeout=5).rcode())
out["nx"] = rcode("nope.service.switchyard.")
out["refused"] = rcode("example.com.")
q = dns.message.make_query("empty.service.switchyard.", "A")
a = dns.query.udp(q, "127.0.0.1", port=port, timeout=5)
out["empty"] = [dns.rcode.to_text(a.rcode()), len(a.answer), [dns.rdatatype.to_text(x.rdtype) for x in a.authority]]
q = dns.message.make_query("big.service.switchyard.", "A", use_edns=False)
a = dns.query.udp(q, "127.0.0.1", port=port, timeout=5, ignore_trailing=True)
out["tc"] = bool(a.flags & dns.flags.TC)
a = dns.query.tcp(q, "127.0.0.1", port=port, timeout=5)
out["tcp"] = sum(len(x) for x in a.answer)
print(json.dumps(out))
"#;

/// Runs `dig @server -p port args…`; its output.
async fn dig(server: SocketAddr, args: &[&str]) -> String {
    let out = tokio::process::Command::new("dig")
        .arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "+time=5", "+tries=1"])
        .args(args)
        .output()
        .await
        .expect("dig runs (Debian: apt-get install bind9-dnsutils; scripts/test installs it)");
    assert!(out.status.success(), "dig {args:?}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// Acceptance 1 and 3 with the clients people use: `dig` and dnspython see
/// every endpoint, in rotation; SRV ports and weights; AAAA; NXDOMAIN, an
/// empty NOERROR with the SOA, REFUSED; TC over UDP, the whole answer over
/// TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs dig and SWITCHYARD_TEST_PYTHON with dnspython (scripts/test provides both)"]
async fn dig_and_dnspython_see_the_answers() {
    let python = std::env::var("SWITCHYARD_TEST_PYTHON")
        .expect("SWITCHYARD_TEST_PYTHON: a Python with dnspython (scripts/test sets it)");
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let mut items = unchecked_service("api", free_port(), 3);
    items.extend(unchecked_service("big", free_port(), 40));
    items.push(item(service("empty")));
    items.push(front("empty", free_port()));
    items.push(item(service("v6")));
    items.push(item(pb::resource::Kind::Endpoint(pb::Endpoint {
        name: "v6-1".into(),
        service: "v6".into(),
        address: "::1".into(),
        port: 9006,
        ..Default::default()
    })));
    items.push(front("v6", free_port()));
    apply(&url, items).await;
    let client = agent("client-1", "client", &url).await;
    let config = dns::Config {
        record_limit: 64,
        ..dns::Config::default()
    };
    let dns = Dns::start(&client, "client-1", config).await;
    until_answer(
        dns.addr,
        "v6.service.switchyard.",
        RecordType::AAAA,
        "v6",
        |m| !m.answers.is_empty(),
    )
    .await;

    // dig: three answers in a row start at three different endpoints.
    let mut firsts = Vec::new();
    for _ in 0..3 {
        let short = dig(dns.addr, &["api.service.switchyard", "A", "+short"]).await;
        let lines: Vec<&str> = short.lines().collect();
        assert_eq!(lines.len(), 3, "{short}");
        firsts.push(lines[0].to_owned());
    }
    eprintln!("dig: first records {firsts:?}");
    assert_eq!(
        firsts.iter().collect::<BTreeSet<_>>().len(),
        3,
        "{firsts:?}"
    );
    let srv = dig(dns.addr, &["api.service.switchyard", "SRV", "+short"]).await;
    let mut srv: Vec<&str> = srv.lines().collect();
    srv.sort();
    assert_eq!(
        srv,
        [
            "1 1 9000 7f000201.addr.switchyard.",
            "1 1 9000 7f000202.addr.switchyard.",
            "1 1 9000 7f000203.addr.switchyard.",
        ]
    );
    let full = dig(dns.addr, &["api.service.switchyard", "SRV"]).await;
    assert!(
        full.contains("ADDITIONAL: 4"),
        "3 addresses and the OPT record:\n{full}"
    );
    let aaaa = dig(dns.addr, &["v6.service.switchyard", "AAAA", "+short"]).await;
    assert_eq!(aaaa.trim(), "::1");
    let nx = dig(dns.addr, &["nope.service.switchyard", "A"]).await;
    assert!(nx.contains("status: NXDOMAIN"), "{nx}");
    assert!(nx.contains("AUTHORITY: 1"), "{nx}");
    let empty = dig(dns.addr, &["empty.service.switchyard", "A"]).await;
    assert!(empty.contains("status: NOERROR"), "{empty}");
    assert!(empty.contains("ANSWER: 0, AUTHORITY: 1"), "{empty}");
    assert!(empty.contains("SOA"), "{empty}");
    let refused = dig(dns.addr, &["example.com", "A"]).await;
    assert!(refused.contains("status: REFUSED"), "{refused}");
    let tc = dig(
        dns.addr,
        &["big.service.switchyard", "A", "+noedns", "+ignore"],
    )
    .await;
    let flags = tc
        .lines()
        .find(|l| l.contains(";; flags:"))
        .expect("a flags line");
    assert!(flags.contains(" tc"), "{tc}");
    let tcp = dig(dns.addr, &["big.service.switchyard", "A", "+tcp", "+short"]).await;
    assert_eq!(tcp.lines().count(), 40, "{tcp}");
    // Without +ignore, dig retries a truncated answer over TCP by itself.
    let retried = dig(
        dns.addr,
        &["big.service.switchyard", "A", "+noedns", "+short"],
    )
    .await;
    assert_eq!(retried.lines().count(), 40, "{retried}");

    let out = tokio::process::Command::new(&python)
        .args(["-c", DNSPYTHON, &dns.addr.port().to_string()])
        .output()
        .await
        .expect("run python");
    assert!(out.status.success(), "dnspython: {out:?}");
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    eprintln!("dnspython: {got}");
    let firsts: Vec<&str> = got["firsts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    for pair in firsts.windows(2) {
        assert_ne!(pair[0], pair[1], "rotation: {firsts:?}");
    }
    assert_eq!(
        got["all"],
        serde_json::json!(["127.0.2.1", "127.0.2.2", "127.0.2.3"])
    );
    assert_eq!(
        got["srv"][0],
        serde_json::json!([9000, 1, "7f000201.addr.switchyard."])
    );
    assert_eq!(got["aaaa"], serde_json::json!(["::1"]));
    assert_eq!(got["nx"], "NXDOMAIN");
    assert_eq!(got["refused"], "REFUSED");
    assert_eq!(got["empty"], serde_json::json!(["NOERROR", 0, ["SOA"]]));
    assert_eq!(got["tc"], true);
    assert_eq!(got["tcp"], 40);

    dns.stop().await;
    client.agent.stop().await.unwrap();
    server.stop().await;
}

/// A service exported to the DNS of some nodes (`Service.dns`): nodes
/// whose labels match receive it with all its endpoints and answer for
/// it; other nodes never learn of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exported_service_reaches_exactly_the_selected_nodes() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let mut items = vec![item(pb::resource::Kind::Service(pb::Service {
        name: "db".into(),
        dns: Some(pb::DnsExport {
            node_selector: BTreeMap::from([("zone".into(), "a".into())]),
        }),
        ..Default::default()
    }))];
    for i in 1..=2 {
        items.push(item(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: format!("db-{i}"),
            service: "db".into(),
            address: format!("127.0.3.{i}"),
            port: 5432,
            ..Default::default()
        })));
    }
    apply(&url, items).await;
    let start = |node: &'static str, zone: &'static str| {
        let url = url.clone();
        async move {
            let dir = Arc::new(TempDir::new());
            let labels = BTreeMap::from([("zone".to_string(), zone.to_string())]);
            let agent = TestAgent::start_with(
                switchyard_agent::Config {
                    node_id: node.into(),
                    labels: labels.clone(),
                    control_planes: vec![url],
                    data_dir: dir.path().to_path_buf(),
                    backoff_base: Duration::from_millis(20),
                    ..Default::default()
                },
                dir,
            )
            .await;
            let dns = Dns::start_labelled(&agent, node, labels, dns::Config::default()).await;
            (agent, dns)
        }
    };
    let (in_a, dns_a) = start("node-a", "a").await;
    let (in_b, dns_b) = start("node-b", "b").await;
    let name = "db.service.switchyard.";
    until_answer(dns_a.addr, name, RecordType::A, "db on node-a", |m| {
        ips(m).len() == 2
    })
    .await;
    in_b.until("synced", |c| c.revision > 0).await;
    assert!(
        in_b.config().services.is_empty(),
        "node-b never learns of db"
    );
    assert!(in_b.config().endpoints.is_empty());
    let nx = ask(dns_b.addr, name, RecordType::A, Via::Udp).await;
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);

    dns_a.stop().await;
    dns_b.stop().await;
    in_a.agent.stop().await.unwrap();
    in_b.agent.stop().await.unwrap();
    server.stop().await;
}

/// An HTTP/1.1 keep-alive backend on `ip` (a free port) that answers every
/// request with `status`.
async fn status_backend(ip: &str, status: u16) -> (u16, JoinHandle<()>) {
    let l = tokio::net::TcpListener::bind((ip.parse::<IpAddr>().unwrap(), 0))
        .await
        .unwrap();
    let port = l.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut s, _)) = l.accept().await {
            conns.spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let resp = format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\n\r\nok");
                    if s.write_all(resp.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (port, task)
}

/// Acceptance 2, the proxy's side: an endpoint the built-in proxy's
/// outlier detection ejects (it answers 5xx; nothing checks its health, so
/// it stays routable) leaves the DNS answers of the node whose proxy
/// ejected it, and comes back once its ejection time is over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_ejected_by_the_proxy_leaves_the_answers_until_its_ejection_ends() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let url = server.url();
    let mut backends = Vec::new();
    let mut items = Vec::new();
    for (i, status) in [(1, 200), (2, 200), (3, 500)] {
        let ip = format!("127.0.0.{i}");
        let (port, task) = status_backend(&ip, status).await;
        backends.push(task);
        items.push(item(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: format!("api-{i}"),
            service: "api".into(),
            address: ip,
            port: u32::from(port),
            ..Default::default()
        })));
    }
    let ejection = Duration::from_secs(2);
    items.push(item(pb::resource::Kind::Service(pb::Service {
        name: "api".into(),
        outlier_detection: Some(pb::OutlierDetection {
            consecutive_5xx: 2,
            base_ejection_time: Some(prost_types::Duration::try_from(ejection).unwrap()),
            max_ejection_percent: 50,
            ..Default::default()
        }),
        ..Default::default()
    })));
    let listen = free_port();
    items.push(item(switchyard_control_plane::testing::fixtures::route_to(
        "api", "api",
    )));
    items.push(item(pb::resource::Kind::Listener(
        switchyard_control_plane::testing::fixtures::listener(
            "front",
            "127.0.0.1",
            u32::from(listen),
            "api",
        ),
    )));
    apply(&url, items).await;
    let client = agent("client-1", "client", &url).await;
    client
        .until("three endpoints", |c| c.endpoints.len() == 3)
        .await;
    let proxy = switchyard_proxy::Builtin::new();
    let outliers = proxy.outliers();
    let stop_proxy = CancellationToken::new();
    let proxy_task = tokio::spawn(proxy.run(client.agent.config(), stop_proxy.clone()));
    let dns = Dns::start_with_outliers(&client, "client-1", outliers).await;
    let name = "api.service.switchyard.";
    until_answer(dns.addr, name, RecordType::A, "3 endpoints", |m| {
        ips(m).len() == 3
    })
    .await;

    // Requests through the proxy until it ejects api-3 (its 5xx answers
    // reach the client: no retry is configured).
    let started = Instant::now();
    let ejected = loop {
        let _ = get(listen, "/").await;
        let m = ask(dns.addr, name, RecordType::A, Via::Udp).await;
        if !ips(&m).contains(&ip("127.0.0.3")) {
            assert_eq!(ips(&m).len(), 2, "{m:?}");
            break Instant::now();
        }
        assert!(started.elapsed() < WAIT, "api-3 never left the answers");
    };
    // Out of the SRV answers too.
    let m = ask(dns.addr, name, RecordType::SRV, Via::Udp).await;
    assert_eq!(m.answers.len(), 2, "{m:?}");
    // Back once the ejection is over, with no traffic needed.
    let back = until_answer(dns.addr, name, RecordType::A, "api-3 back", |m| {
        ips(m).contains(&ip("127.0.0.3"))
    })
    .await;
    eprintln!("ejected api-3 out of the DNS answers for {back:?} (ejection time {ejection:?})");
    assert!(
        ejected.elapsed() >= ejection - Duration::from_millis(300),
        "back after {:?}, before its {ejection:?} ejection ended",
        ejected.elapsed()
    );

    stop_proxy.cancel();
    let _ = proxy_task.await;
    dns.stop().await;
    client.agent.stop().await.unwrap();
    for b in backends {
        b.abort();
    }
    server.stop().await;
}
