//! The node's DNS interface: `<service>.service.<domain>` answered with the
//! service's routable endpoints, in rotation, for programs that know
//! nothing of a mesh (DNS round robin and discovery).
//!
//! Answers come straight from the configuration the node serves (and its
//! own health checks), so they keep coming while every control plane is
//! unreachable. [`serve`] follows the configuration and rebuilds an
//! [`answer::Index`] on each change; hickory's server loop reads UDP and TCP
//! and hands each question to [`Handler`], which answers from the current
//! index (see [`answer`] for the names and records).
//!
//! Only the domain is answered: other names are refused (no recursion, so
//! no open resolver). Over UDP an answer larger than 512 bytes, or than
//! the client's EDNS buffer (at most 1232 bytes, the size that avoids IP
//! fragmentation), is truncated with the TC bit and the client asks again
//! over TCP, which carries it whole.

pub mod answer;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use switchyard::metrics::{Encoder, Histogram, Type};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use crate::health::Results;
use crate::state::NodeConfig;
pub use answer::{Index, Settings};

/// The default address (`--dns-listen`), UDP and TCP: Consul's DNS port,
/// on loopback.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8600";
/// The default domain (`--dns-domain`).
pub const DEFAULT_DOMAIN: &str = "switchyard.";
/// The default TTL in seconds (`--dns-ttl`). Short, because an answer
/// names the endpoints routable now: a client that caches it keeps
/// sending to an endpoint that failed for up to this long after it left
/// the answers. Not 0, so that a caching resolver in front (nscd,
/// systemd-resolved, a sidecar dnsmasq) can still absorb a burst of
/// lookups.
pub const DEFAULT_TTL: u32 = 2;
/// The default record limit (`--dns-record-limit`), as Consul's
/// `a_record_limit`.
pub const DEFAULT_RECORD_LIMIT: usize = 8;
/// Largest record limit accepted: 64 A records already need TCP.
pub const MAX_RECORD_LIMIT: usize = 64;
/// How long a TCP connection may stay idle between questions.
const TCP_IDLE: Duration = Duration::from_secs(5);
/// Largest UDP answer sent to an EDNS client, whatever buffer it
/// advertises (the DNS flag day 2020 size).
const MAX_UDP_PAYLOAD: u16 = 1232;

/// The DNS interface's settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// The domain answered for (`switchyard.`).
    pub domain: Name,
    /// TTL of every record, in seconds.
    pub ttl: u32,
    /// Most address or SRV records in one answer (1 to [`MAX_RECORD_LIMIT`]).
    pub record_limit: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            domain: answer::parse_domain(DEFAULT_DOMAIN).expect("a valid default domain"),
            ttl: DEFAULT_TTL,
            record_limit: DEFAULT_RECORD_LIMIT,
        }
    }
}

/// The record types counted apart in metrics; the rest count as `other`.
const QTYPES: [&str; 6] = ["A", "AAAA", "SRV", "SOA", "ANY", "other"];
/// The answer codes counted apart in metrics.
const RCODES: [&str; 7] = [
    "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "other",
];

/// What the DNS interface did, for metrics: questions by type and answer
/// code, and how long answering took.
#[derive(Debug, Default)]
pub struct Stats {
    answers: [[AtomicU64; RCODES.len()]; QTYPES.len()],
    latency: Histogram,
}

impl Stats {
    fn record(&self, qtype: Option<RecordType>, code: ResponseCode, elapsed: Duration) {
        let t = match qtype {
            Some(RecordType::A) => 0,
            Some(RecordType::AAAA) => 1,
            Some(RecordType::SRV) => 2,
            Some(RecordType::SOA) => 3,
            Some(RecordType::ANY) => 4,
            _ => 5,
        };
        let c = match code {
            ResponseCode::NoError => 0,
            ResponseCode::FormErr => 1,
            ResponseCode::ServFail => 2,
            ResponseCode::NXDomain => 3,
            ResponseCode::NotImp => 4,
            ResponseCode::Refused => 5,
            _ => 6,
        };
        self.answers[t][c].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(elapsed);
    }

    /// Answers sent with type `qtype` and code `rcode` (as the metrics name
    /// them, e.g. `"A"`, `"NXDOMAIN"`).
    pub fn count(&self, qtype: &str, rcode: &str) -> u64 {
        let t = QTYPES.iter().position(|q| *q == qtype);
        let c = RCODES.iter().position(|r| *r == rcode);
        match (t, c) {
            (Some(t), Some(c)) => self.answers[t][c].load(Ordering::Relaxed),
            _ => 0,
        }
    }

    /// Writes the DNS metrics (`switchyard_agent_dns_*`).
    pub fn encode(&self, enc: &mut Encoder) {
        let mut f = enc.family(
            "switchyard_agent_dns_answers_total",
            Type::Counter,
            "DNS questions answered, by record type asked and answer code.",
        );
        for (t, qtype) in QTYPES.iter().enumerate() {
            for (c, rcode) in RCODES.iter().enumerate() {
                let n = self.answers[t][c].load(Ordering::Relaxed);
                f.sample(&[("type", qtype), ("rcode", rcode)], n);
            }
        }
        enc.family(
            "switchyard_agent_dns_answer_seconds",
            Type::Histogram,
            "Time from a DNS question's arrival to its answer being sent.",
        )
        .histogram(&[], &self.latency);
    }
}

/// Answers questions from the current index; hickory's server runs it for
/// every UDP datagram and every question on a TCP connection.
#[derive(Debug)]
pub struct Handler {
    /// The index of the configuration served now; read per question (a
    /// clone of the `Arc`, never held across an `.await`).
    index: watch::Receiver<Arc<Index>>,
    /// The proxy's outlier ejections, when the built-in proxy runs.
    outliers: Option<switchyard_proxy::Outliers>,
    stats: Arc<Stats>,
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response: R,
    ) -> ResponseInfo {
        let started = Instant::now();
        let qtype = request.queries.queries().first().map(|q| q.query_type());
        let info = self.respond(request, response).await;
        self.stats
            .record(qtype, info.response_code, started.elapsed());
        info
    }
}

impl Handler {
    async fn respond<R: ResponseHandler>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let mut metadata = Metadata::response_from_request(&request.metadata);
        let mut edns = None;
        if let Some(asked) = &request.edns {
            let mut ours = Edns::new();
            ours.set_max_payload(asked.max_payload().clamp(512, MAX_UDP_PAYLOAD));
            ours.set_version(0);
            if asked.version() > 0 {
                // EDNS version 0 is the only one there is.
                metadata.response_code = ResponseCode::BADVERS;
            }
            edns = Some(ours);
        }
        let index = self.index.borrow().clone();
        let builder = MessageResponseBuilder::new(&request.queries, edns.as_ref());
        let outcome = if metadata.response_code != ResponseCode::NoError {
            None
        } else if request.metadata.message_type != MessageType::Query {
            metadata.response_code = ResponseCode::FormErr;
            None
        } else if request.metadata.op_code != OpCode::Query {
            metadata.response_code = ResponseCode::NotImp;
            None
        } else {
            match request.request_info() {
                // Exactly one question, as every client sends.
                Err(_) => {
                    metadata.response_code = ResponseCode::FormErr;
                    None
                }
                Ok(info) if !matches!(info.query.query_class(), DNSClass::IN | DNSClass::ANY) => {
                    metadata.response_code = ResponseCode::Refused;
                    None
                }
                Ok(info) => {
                    let query = info.query.original();
                    let outliers = self.outliers.as_ref();
                    let answer = index.answer(query.name(), query.query_type(), |e| {
                        outliers.is_some_and(|o| o.is_ejected(e))
                    });
                    metadata.response_code = answer.code;
                    // Authoritative for its domain; refusals are not.
                    metadata.authoritative = answer.code != ResponseCode::Refused;
                    Some(answer)
                }
            }
        };
        let sent = match &outcome {
            Some(a) => {
                let message = builder.build(
                    metadata,
                    a.answers.iter(),
                    std::iter::empty(),
                    a.soa.iter(),
                    a.additionals.iter(),
                );
                response.send_response(message).await
            }
            None => {
                let message = builder.build_no_records(metadata);
                response.send_response(message).await
            }
        };
        match sent {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "sending a DNS answer");
                let mut metadata = metadata;
                metadata.response_code = ResponseCode::ServFail;
                ResponseInfo::from(Header {
                    metadata,
                    counts: HeaderCounts::default(),
                })
            }
        }
    }
}

/// The sockets of the DNS interface, bound before anything starts (a
/// taken port is a configuration error).
#[derive(Debug)]
pub struct Sockets {
    udp: tokio::net::UdpSocket,
    tcp: tokio::net::TcpListener,
}

impl Sockets {
    /// Binds UDP and TCP on `addr`. Port 0 picks a port free for both.
    pub async fn bind(addr: SocketAddr) -> std::io::Result<Sockets> {
        if addr.port() != 0 {
            let udp = tokio::net::UdpSocket::bind(addr).await?;
            let tcp = tokio::net::TcpListener::bind(addr).await?;
            return Ok(Sockets { udp, tcp });
        }
        // A port free for UDP may be taken for TCP: try a few.
        let mut last = None;
        for _ in 0..16 {
            let udp = tokio::net::UdpSocket::bind(addr).await?;
            let port = udp.local_addr()?;
            match tokio::net::TcpListener::bind(port).await {
                Ok(tcp) => return Ok(Sockets { udp, tcp }),
                Err(e) => last = Some(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no port free for UDP and TCP")))
    }

    /// The address they are bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.udp.local_addr()
    }
}

/// Everything [`serve`] needs from the agent.
#[derive(Debug)]
pub struct Sources {
    /// The configuration the node serves.
    pub config: watch::Receiver<Arc<NodeConfig>>,
    /// The node's own health-check results.
    pub health: watch::Receiver<Results>,
    /// This node's id.
    pub node_id: String,
    /// This node's labels (its `zone` is preferred).
    pub labels: switchyard::resource::Labels,
    /// The built-in proxy's outlier ejections, if it runs.
    pub outliers: Option<switchyard_proxy::Outliers>,
}

/// Answers DNS on `sockets` from the configuration `sources` publish until
/// `shutdown`; counts in `stats`.
///
/// One future owns everything: the index follower and hickory's server
/// (whose per-socket and per-connection tasks live in its own join set and
/// end with it).
pub async fn serve(
    sockets: Sockets,
    config: Config,
    sources: Sources,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let Sources {
        config: mut node_config,
        mut health,
        node_id,
        labels,
        outliers,
    } = sources;
    let settings = Settings {
        domain: config.domain.clone(),
        ttl: config.ttl,
        record_limit: config.record_limit.clamp(1, MAX_RECORD_LIMIT),
        node_id,
        labels,
    };
    let counters = answer::Counters::default();
    let build =
        |c: &NodeConfig, h: &Results| Arc::new(Index::build(settings.clone(), c, h, &counters));
    let first = build(
        &node_config.borrow_and_update(),
        &health.borrow_and_update(),
    );
    let (publish, index) = watch::channel(first);
    let handler = Handler {
        index,
        outliers,
        stats,
    };
    if let Ok(addr) = sockets.local_addr() {
        info!(%addr, domain = %config.domain, "serving DNS (UDP and TCP)");
    }
    let mut server = hickory_server::Server::new(handler);
    server.register_socket(sockets.udp);
    server.register_listener(sockets.tcp, TCP_IDLE, 64);
    let follow = async {
        loop {
            tokio::select! {
                changed = node_config.changed() => if changed.is_err() { break },
                changed = health.changed() => if changed.is_err() { break },
            }
            let index = build(
                &node_config.borrow_and_update(),
                &health.borrow_and_update(),
            );
            publish.send_replace(index);
        }
        // The agent stopped publishing: only shutdown is left.
        std::future::pending::<()>().await;
    };
    let result = tokio::select! {
        _ = shutdown.cancelled() => Ok(()),
        _ = follow => Ok(()),
        done = server.block_until_done() => done,
    };
    let stopped = server.shutdown_gracefully().await;
    result
        .and(stopped)
        .map_err(|e| std::io::Error::other(e.to_string()))
}

#[cfg(test)]
mod tests;
