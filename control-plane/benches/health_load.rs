//! Load tool for health reports: N simulated agents on real gRPC streams
//! against one `switchyard-cp` process, each owning endpoints and reporting
//! their health transitions at a steady total rate.
//!
//! Reports the transitions per second the control plane commits, its
//! database write rate (transactions and rows per second), and the time from
//! a failure report to every agent whose proxy routes to that endpoint
//! holding it as unhealthy (p50/p99; the detection time of real checks comes
//! on top).
//!
//! The fleet: `--services S` services; agent `i` carries the label
//! `svc=<i mod S>`, so it opens the listener of that service and receives
//! its endpoints, and owns `--endpoints K` endpoints of it. Every failure
//! of an endpoint must therefore reach the N/S agents of its service.
//!
//! Flap damping is turned off (`--flap-half-life 0s`): each endpoint flips
//! every few seconds here, which damping would hold, and the point is the
//! write path's capacity.
//!
//! Run through `scripts/bench-health`, or directly:
//! `cargo bench -p switchyard-control-plane --bench health_load -- --rate 5000`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard_control_plane::testing::fixtures::{self, item, route_to, service};
use switchyard_control_plane::testing::{CpProcess, TestDb};
use tokio::sync::{mpsc, watch};
use tonic::transport::Endpoint;

mod load;
use load::{OnPush, Shared, Sim, connection_count, cpu, machine_cpu, percentile, wait_for};

struct Args {
    agents: usize,
    services: usize,
    endpoints: usize,
    rate: f64,
    seconds: f64,
    probe_every: u64,
    /// HTTP/2 connections the agents' streams share; `None`: one per agent,
    /// as real agents connect.
    connections: Option<usize>,
    sqlite: bool,
}

fn parse(all: Vec<String>) -> Args {
    let mut a = Args {
        agents: 1000,
        services: 100,
        endpoints: 10,
        rate: 5000.0,
        seconds: 10.0,
        probe_every: 10,
        connections: None,
        sqlite: false,
    };
    let mut it = all.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => a.agents = value().parse().expect("--agents"),
            "--services" => a.services = value().parse().expect("--services"),
            "--endpoints" => a.endpoints = value().parse().expect("--endpoints"),
            "--rate" => a.rate = value().parse().expect("--rate"),
            "--seconds" => a.seconds = value().parse().expect("--seconds"),
            "--probe-every" => a.probe_every = value().parse().expect("--probe-every"),
            "--connections" => a.connections = Some(value().parse().expect("--connections")),
            "--sqlite" => a.sqlite = true,
            other => panic!(
                "unknown flag {other}; flags: --agents --services --endpoints --rate --seconds \
                 --probe-every --connections --sqlite"
            ),
        }
    }
    assert!(
        a.services >= 1 && a.agents >= a.services,
        "need at least one agent per service"
    );
    a
}

fn endpoint_name(agent: usize, j: usize) -> String {
    format!("ep-{agent}-{j}")
}

/// Services with a route and a listener each (selected by `svc=<k>`), and
/// every agent's endpoints, in batches the API accepts.
fn configuration(a: &Args) -> Vec<Vec<pb::ApplyItem>> {
    let mut all = vec![];
    for k in 0..a.services {
        let name = format!("svc-{k}");
        all.push(item(service(&name)));
        all.push(item(route_to(&name, &name)));
        let mut listener = fixtures::listener(&name, "127.0.0.1", 20_000 + k as u32, &name);
        listener.node_selector = BTreeMap::from([("svc".into(), k.to_string())]);
        all.push(item(pb::resource::Kind::Listener(listener)));
    }
    for i in 0..a.agents {
        for j in 0..a.endpoints {
            all.push(item(pb::resource::Kind::Endpoint(pb::Endpoint {
                node: format!("node-{i}"),
                ..fixtures::endpoint(
                    &endpoint_name(i, j),
                    &format!("svc-{}", i % a.services),
                    10_000 + j as u32,
                )
            })));
        }
    }
    // Services, routes and listeners first: endpoints name services.
    all.chunks(900).map(<[_]>::to_vec).collect()
}

/// A failure report being followed to every agent of its service.
struct Probe {
    sent: Instant,
    expected: usize,
    seen: HashSet<usize>,
}

#[derive(Default)]
struct Probes {
    open: HashMap<String, Probe>,
    done: Vec<Duration>,
    /// Probes whose endpoint flipped back before every agent saw it down.
    abandoned: u64,
}

/// Health-change rows and write transactions in the change log after `after`.
async fn writes(url: &str, after: u64) -> (u64, u64) {
    let query = "SELECT COUNT(*), COUNT(DISTINCT revision) FROM changes \
                 WHERE kind = 'endpoint' AND revision > $1";
    let (rows, txs): (i64, i64) = if url.starts_with("sqlite") {
        let pool = sqlx::SqlitePool::connect(url).await.expect("sqlite");
        sqlx::query_as(query)
            .bind(after as i64)
            .fetch_one(&pool)
            .await
            .expect("count")
    } else {
        let pool = sqlx::PgPool::connect(url).await.expect("postgres");
        sqlx::query_as(query)
            .bind(after as i64)
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    (rows as u64, txs as u64)
}

#[tokio::main]
async fn main() {
    let Some(a) = load::bench_args("health_load").map(parse) else {
        return;
    };
    let db = if a.sqlite {
        TestDb::sqlite()
    } else {
        TestDb::postgres().await
    };
    let backend = if a.sqlite { "sqlite" } else { "postgres" };
    let cp = CpProcess::start(
        db.url(),
        "127.0.0.1:0".parse().unwrap(),
        &["--flap-half-life", "0s"],
    )
    .await;
    let mut operator = cp.client().await;
    for batch in configuration(&a) {
        operator
            .apply(pb::ApplyRequest {
                items: batch,
                dry_run: false,
            })
            .await
            .expect("apply configuration");
    }
    let pid = cp.child.id().expect("pid").to_string();

    let connections = connection_count(a.connections, a.agents);
    let channels: Vec<_> = (0..connections)
        .map(|_| {
            Endpoint::from_shared(format!("http://{}", cp.addr))
                .unwrap()
                .connect_lazy()
        })
        .collect();
    let shared = Arc::new(Shared {
        revision: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    });
    let probes = Arc::new(Mutex::new(Probes::default()));
    let on_push: OnPush = {
        let probes = probes.clone();
        Arc::new(move |agent, upserts, at| {
            let mut p = probes.lock().unwrap();
            for r in upserts {
                let Some(pb::resource::Kind::Endpoint(e)) = &r.kind else {
                    continue;
                };
                if e.health() != pb::Health::Unhealthy {
                    continue;
                }
                let Some(probe) = p.open.get_mut(&e.name) else {
                    continue;
                };
                probe.seen.insert(agent);
                if probe.seen.len() == probe.expected {
                    let took = at.saturating_duration_since(probe.sent);
                    p.open.remove(&e.name);
                    p.done.push(took);
                }
            }
        })
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let mut senders = Vec::with_capacity(a.agents);
    for id in 0..a.agents {
        let (tx, rx) = mpsc::channel(64);
        senders.push(tx);
        tasks.spawn(
            Sim {
                id,
                labels: BTreeMap::from([("svc".into(), (id % a.services).to_string())]),
                channel: channels[id % channels.len()].clone(),
                shared: shared.clone(),
                stop: stop_rx.clone(),
                reports: Some(rx),
                on_push: Some(on_push.clone()),
                heartbeat: None,
            }
            .run(),
        );
    }
    let s = shared.clone();
    let connect = wait_for("initial sync", Duration::from_secs(120), || {
        s.synced.load(Ordering::Relaxed) as usize >= a.agents
    })
    .await;
    let start_revision = operator
        .list(pb::ListRequest {
            kind: pb::Kind::Service as i32,
            page_size: 1,
            ..Default::default()
        })
        .await
        .expect("revision")
        .into_inner()
        .revision;

    // The report stream: transition n flips endpoint (n / N) mod K of agent
    // n mod N, in 10 ms slices.
    let per_agent_service = a.agents / a.services;
    let mut healthy = vec![false; a.agents * a.endpoints];
    let total = (a.rate * a.seconds) as u64;
    let slice = Duration::from_millis(10);
    let per_slice = a.rate * slice.as_secs_f64();
    let (mut sent, mut dropped) = (0u64, 0u64);
    let (cp_cpu0, tool_cpu0, all_cpu0, wall0) =
        (cpu(&pid), cpu("self"), machine_cpu(), Instant::now());
    let mut tick = tokio::time::interval(slice);
    let mut due = 0.0f64;
    while sent + dropped < total {
        tick.tick().await;
        due += per_slice;
        while due >= 1.0 && sent + dropped < total {
            due -= 1.0;
            let n = sent + dropped;
            let agent = (n % a.agents as u64) as usize;
            let j = ((n / a.agents as u64) % a.endpoints as u64) as usize;
            let slot = agent * a.endpoints + j;
            healthy[slot] = !healthy[slot];
            let name = endpoint_name(agent, j);
            let health = if healthy[slot] {
                pb::Health::Healthy
            } else {
                pb::Health::Unhealthy
            };
            if health == pb::Health::Unhealthy && n % a.probe_every == 0 {
                let mut p = probes.lock().unwrap();
                if p.open.remove(&name).is_some() {
                    p.abandoned += 1;
                }
                // The endpoint's own agent is one of its service's agents.
                p.open.insert(
                    name.clone(),
                    Probe {
                        sent: Instant::now(),
                        expected: per_agent_service,
                        seen: HashSet::new(),
                    },
                );
            } else if health == pb::Health::Healthy {
                let mut p = probes.lock().unwrap();
                if p.open.remove(&name).is_some() {
                    p.abandoned += 1;
                }
            }
            let report = pb::HealthReport {
                endpoints: vec![pb::EndpointHealth {
                    endpoint: name,
                    health: health as i32,
                    reason: "load".into(),
                    observed_at: None,
                }],
            };
            match senders[agent].try_send(report) {
                Ok(()) => sent += 1,
                Err(_) => dropped += 1,
            }
        }
    }
    let offered_for = wall0.elapsed();
    // Until every report is committed (or 10 s pass: then the control
    // plane did not keep up, and the count says by how much).
    let (mut rows, mut txs) = writes(db.url(), start_revision).await;
    while rows < sent && wall0.elapsed() < offered_for + Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(20)).await;
        (rows, txs) = writes(db.url(), start_revision).await;
    }
    let committed_for = wall0.elapsed();
    let (cp_cpu, tool_cpu) = (cpu(&pid) - cp_cpu0, cpu("self") - tool_cpu0);
    let other_cpu = (machine_cpu() - all_cpu0).saturating_sub(cp_cpu + tool_cpu);
    // The last pushes land.
    tokio::time::sleep(Duration::from_millis(500)).await;

    let _ = stop_tx.send(true);
    while tasks.join_next().await.is_some() {}
    cp.kill().await;
    let mut p = probes.lock().unwrap();
    let open = p.open.len();
    p.done.sort();

    println!(
        "health_load: backend={backend} agents={} connections={connections} services={} endpoints/agent={} rate={}/s for {}s",
        a.agents, a.services, a.endpoints, a.rate, a.seconds
    );
    println!("  initial sync of all agents:      {connect:?}");
    println!(
        "  reports offered:                 {sent} in {offered_for:?} ({:.0}/s; {dropped} not sent: agent queue full)",
        sent as f64 / offered_for.as_secs_f64()
    );
    println!(
        "  transitions committed:           {rows} of {sent} ({:.0}/s: the last one {:?} after the last report)",
        rows as f64 / committed_for.as_secs_f64(),
        committed_for.saturating_sub(offered_for)
    );
    println!(
        "  database writes:                 {txs} transactions ({:.1}/s), {:.0} rows/tx",
        txs as f64 / committed_for.as_secs_f64(),
        rows as f64 / txs.max(1) as f64
    );
    println!(
        "  failure report -> all {per_agent_service} agents of the service: p50 {:?}  p99 {:?}  max {:?}  ({} probes, {} abandoned, {} unfinished)",
        percentile(&p.done, 0.50),
        percentile(&p.done, 0.99),
        p.done.last().copied().unwrap_or_default(),
        p.done.len(),
        p.abandoned,
        open
    );
    println!(
        "  CPU:                             control plane {cp_cpu:?}, load tool {tool_cpu:?}, everything else (Postgres) {other_cpu:?}, over {committed_for:?} wall (2 cores shared)"
    );
}
