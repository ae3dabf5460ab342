//! What the load tools share: a simulated agent on a real `Sync` stream,
//! and measuring helpers.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use prost::Message;
use switchyard::pb;
use switchyard::pb::agent_service_client::AgentServiceClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// What every simulated agent reports.
#[derive(Default)]
pub struct Shared {
    /// The newest revision each agent holds.
    pub revision: Vec<AtomicU64>,
    pub bytes: AtomicU64,
    pub pushes: AtomicU64,
    pub snapshots: AtomicU64,
    /// Agents that received the first push of their current stream.
    pub synced: AtomicU64,
    /// Stream attempts that failed (connection refused, TLS handshake
    /// failed or timed out, stream refused) and were retried.
    pub failures: AtomicU64,
    /// Heartbeats sent.
    pub heartbeats: AtomicU64,
}

/// Called with (agent id, upserted resources, arrival time) for every push.
pub type OnPush = Arc<dyn Fn(usize, &[pb::Resource], Instant) + Send + Sync>;

/// One simulated agent.
pub struct Sim {
    pub id: usize,
    pub labels: BTreeMap<String, String>,
    pub channel: Channel,
    pub shared: Arc<Shared>,
    pub stop: watch::Receiver<bool>,
    /// Health reports to send on whichever stream is open.
    pub reports: Option<mpsc::Receiver<pb::HealthReport>>,
    pub on_push: Option<OnPush>,
    /// Sends a heartbeat this often on each stream, the first one this
    /// long after the stream opens, as real agents do (`None`: never).
    pub heartbeat: Option<Duration>,
}

impl Sim {
    /// Holds its view like a real agent, acks every push, sends the health
    /// reports it is given, and reconnects (with its revision and
    /// inventory) when the stream breaks. Returns (revision reached, when)
    /// for every push received.
    pub async fn run(mut self) -> Vec<(u64, Instant)> {
        let id = self.id;
        let mut reached = vec![];
        let mut revision = 0u64;
        let mut inventory: BTreeMap<(i32, String), u64> = BTreeMap::new();
        loop {
            if *self.stop.borrow() {
                return reached;
            }
            let (tx, rx) = mpsc::channel(4);
            let hello = pb::Hello {
                node_id: format!("node-{id}"),
                labels: self.labels.clone(),
                agent_version: "load".into(),
                // One simulated agent per node: a reconnect replaces its
                // previous stream at once.
                instance_id: format!("load-{id}"),
                last_applied_revision: revision,
                resources: inventory
                    .iter()
                    .map(|((kind, name), rev)| pb::ResourceVersion {
                        r#ref: Some(pb::ResourceRef {
                            kind: *kind,
                            name: name.clone(),
                        }),
                        revision: *rev,
                    })
                    .collect(),
            };
            let _ = tx
                .send(pb::SyncRequest {
                    message: Some(pb::sync_request::Message::Hello(hello)),
                })
                .await;
            let mut client = AgentServiceClient::new(self.channel.clone());
            let mut stream = match client.sync(ReceiverStream::new(rx)).await {
                Ok(s) => s.into_inner(),
                Err(_) => {
                    self.shared.failures.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50 + (id % 100) as u64)).await;
                    continue;
                }
            };
            let mut first = true;
            let mut heartbeat = self.heartbeat.map(|period| {
                let mut tick =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                tick
            });
            loop {
                let beat = async {
                    match &mut heartbeat {
                        Some(tick) => tick.tick().await,
                        None => std::future::pending().await,
                    }
                };
                let reports = async {
                    match &mut self.reports {
                        Some(rx) => rx.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let msg = tokio::select! {
                    _ = self.stop.changed() => return reached,
                    Some(report) = reports => {
                        let health = pb::SyncRequest {
                            message: Some(pb::sync_request::Message::Health(report)),
                        };
                        if tx.send(health).await.is_err() {
                            break;
                        }
                        continue;
                    }
                    _ = beat => {
                        let beat = pb::SyncRequest {
                            message: Some(pb::sync_request::Message::Heartbeat(pb::Heartbeat {
                                sent_at: Some(std::time::SystemTime::now().into()),
                            })),
                        };
                        if tx.send(beat).await.is_err() {
                            break;
                        }
                        self.shared.heartbeats.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    m = stream.message() => m,
                };
                let Ok(Some(msg)) = msg else { break };
                let now = Instant::now();
                let shared = &self.shared;
                shared
                    .bytes
                    .fetch_add(msg.encoded_len() as u64, Ordering::Relaxed);
                shared.pushes.fetch_add(1, Ordering::Relaxed);
                let to = match msg.message {
                    Some(pb::sync_response::Message::Snapshot(s)) => {
                        shared.snapshots.fetch_add(1, Ordering::Relaxed);
                        inventory.clear();
                        let all: Vec<pb::Resource> = s
                            .services
                            .into_iter()
                            .map(pb::resource::Kind::Service)
                            .chain(s.endpoints.into_iter().map(pb::resource::Kind::Endpoint))
                            .chain(s.routes.into_iter().map(pb::resource::Kind::Route))
                            .chain(s.listeners.into_iter().map(pb::resource::Kind::Listener))
                            .map(|k| pb::Resource {
                                kind: Some(k),
                                ..Default::default()
                            })
                            .collect();
                        hold(&mut inventory, &all);
                        if let Some(f) = &self.on_push {
                            f(id, &all, now);
                        }
                        s.revision
                    }
                    Some(pb::sync_response::Message::Delta(d)) => {
                        hold(&mut inventory, &d.upserts);
                        for r in &d.removals {
                            inventory.remove(&(r.kind, r.name.clone()));
                        }
                        if let Some(f) = &self.on_push {
                            f(id, &d.upserts, now);
                        }
                        d.to_revision
                    }
                    _ => continue,
                };
                revision = to;
                if first {
                    first = false;
                    shared.synced.fetch_add(1, Ordering::Relaxed);
                }
                reached.push((to, now));
                shared.revision[id].store(to, Ordering::Relaxed);
                let ack = pb::SyncRequest {
                    message: Some(pb::sync_request::Message::Ack(pb::Ack {
                        revision: to,
                        ..Default::default()
                    })),
                };
                if tx.send(ack).await.is_err() {
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20 + (id % 50) as u64)).await;
        }
    }
}

/// Records the revision of every resource in `resources`.
fn hold(inventory: &mut BTreeMap<(i32, String), u64>, resources: &[pb::Resource]) {
    for r in resources {
        if let Some(target) = switchyard::resource::pb_ref(r) {
            inventory.insert(
                (target.kind.to_pb() as i32, target.name),
                switchyard::resource::pb_revision(r),
            );
        }
    }
}

/// Waits (polling) until `done`, panicking after `limit`.
pub async fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    start.elapsed()
}

/// User + system CPU time of a process (`self` or a pid), from /proc.
pub fn cpu(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |x| x.1)
        .split_whitespace()
        .collect();
    let ticks: u64 = fields
        .get(11..13)
        .map_or(0, |f| f.iter().filter_map(|x| x.parse::<u64>().ok()).sum());
    Duration::from_millis(ticks * 10)
}

/// How many HTTP/2 connections `agents` simulated agents use: `requested`
/// (`--connections`), or one each, as real agents connect.
pub fn connection_count(requested: Option<usize>, agents: usize) -> usize {
    requested.unwrap_or(agents).clamp(1, agents.max(1))
}

/// CPU time every process of the machine used (busy time of all CPUs, from
/// `/proc/stat`): with [`cpu`] of the control plane and the tool, what the
/// rest (Postgres) took from the same cores.
pub fn machine_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...: all but idle and iowait.
    let busy: u64 = ticks
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    Duration::from_millis(busy * 10)
}

/// A counter of the kernel's TCP statistics (`TcpExt` in
/// `/proc/net/netstat`, as `nstat` shows them), e.g. `ListenOverflows`:
/// connections dropped because a listen queue was full. Machine-wide.
#[allow(dead_code)] // sync_load's; health_load shares this module.
pub fn tcp_ext(name: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/net/netstat").unwrap_or_default();
    let mut lines = text.lines().filter(|l| l.starts_with("TcpExt:"));
    let (Some(names), Some(values)) = (lines.next(), lines.next()) else {
        return 0;
    };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == name)
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
}

/// The `p` quantile of sorted durations.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// `None` when not run by `cargo bench` (which passes `--bench`): test
/// runners that build every target list it (`--list`) or run it bare, and
/// it must neither run a long load test then nor fail.
pub fn bench_args(name: &str) -> Option<Vec<String>> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.iter().any(|a| a == "--bench") {
        return Some(all.into_iter().filter(|a| a != "--bench").collect());
    }
    if !all.iter().any(|a| a == "--list") {
        println!("{name} is a load tool: run it with scripts/bench-* or cargo bench");
    }
    None
}
