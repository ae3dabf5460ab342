//! Load tool for the agent stream: N simulated agents on real gRPC streams
//! against one `switchyard-cp` process, a stream of endpoint changes, and a
//! control-plane restart.
//!
//! Reports propagation latency (write acknowledged → delta received at every
//! agent), control-plane RSS per connected agent, bytes pushed per change,
//! and the time for every agent to resync after a `kill -9` and restart.
//!
//! Each simulated agent has its own HTTP/2 connection, as real agents do;
//! `--connections N` multiplexes their streams over N connections instead.
//!
//! Run through `scripts/bench-sync` (builds the release binary, finds
//! Postgres), or directly:
//! `cargo bench -p switchyard-control-plane --bench sync_load -- --agents 10000`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard_control_plane::testing::fixtures::{self, item, route_to, service};
use switchyard_control_plane::testing::{CpProcess, TestDb};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

mod load;
use load::{Shared, Sim, connection_count, cpu, machine_cpu, percentile, wait_for};

struct Args {
    agents: usize,
    changes: usize,
    rate: f64,
    /// HTTP/2 connections the agents' streams share; `None`: one per agent,
    /// as real agents connect.
    connections: Option<usize>,
    filler: usize,
    sqlite: bool,
}

fn parse(all: Vec<String>) -> Args {
    let mut a = Args {
        agents: 1000,
        changes: 100,
        rate: 20.0,
        connections: None,
        filler: 0,
        sqlite: false,
    };
    let mut it = all.into_iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().unwrap_or_else(|| panic!("{flag} needs a value"));
        match flag.as_str() {
            "--agents" => a.agents = value().parse().expect("--agents"),
            "--changes" => a.changes = value().parse().expect("--changes"),
            "--rate" => a.rate = value().parse().expect("--rate"),
            "--connections" => a.connections = Some(value().parse().expect("--connections")),
            "--filler" => a.filler = value().parse().expect("--filler"),
            "--sqlite" => a.sqlite = true,
            other => panic!(
                "unknown flag {other}; flags: --agents --changes --rate --connections --filler --sqlite"
            ),
        }
    }
    a
}

fn endpoint(name: &str, service: &str, port: u32) -> pb::ApplyItem {
    item(pb::resource::Kind::Endpoint(fixtures::endpoint(
        name, service, port,
    )))
}

/// The configuration every agent sees (one listener for all nodes, a route,
/// a service with ten endpoints) plus `filler` services with ten endpoints
/// each that no node reaches: they grow the configuration, not the scope.
fn configuration(filler: usize) -> Vec<Vec<pb::ApplyItem>> {
    let mut base = vec![item(service("web"))];
    base.extend((0..10).map(|i| endpoint(&format!("web-{i}"), "web", 8000 + i)));
    base.push(item(route_to("web", "web")));
    base.push(item(pb::resource::Kind::Listener(fixtures::listener(
        "web",
        "127.0.0.1",
        15001,
        "web",
    ))));
    let mut batches = vec![base];
    let mut batch = vec![];
    for s in 0..filler {
        let name = format!("filler-{s}");
        batch.push(item(service(&name)));
        batch.extend((0..10).map(|i| endpoint(&format!("{name}-{i}"), &name, 9000 + i)));
        if batch.len() >= 900 {
            batches.push(std::mem::take(&mut batch));
        }
    }
    if !batch.is_empty() {
        batches.push(batch);
    }
    batches
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

#[tokio::main]
async fn main() {
    let Some(a) = load::bench_args("sync_load").map(parse) else {
        return;
    };
    let db = if a.sqlite {
        TestDb::sqlite()
    } else {
        TestDb::postgres().await
    };
    let backend = if a.sqlite { "sqlite" } else { "postgres" };
    let cp = CpProcess::start(db.url(), "127.0.0.1:0".parse().unwrap(), &[]).await;
    let addr = cp.addr;
    let mut operator = cp.client().await;
    for batch in configuration(a.filler) {
        operator
            .apply(pb::ApplyRequest {
                items: batch,
                dry_run: false,
            })
            .await
            .expect("apply configuration");
    }
    let pid = cp.child.id().expect("pid");
    let idle_rss = rss_kib(pid);

    let connections = connection_count(a.connections, a.agents);
    let channels: Vec<Channel> = {
        let mut v = vec![];
        for _ in 0..connections {
            v.push(
                Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .http2_adaptive_window(false)
                    .connect_lazy(),
            );
        }
        v
    };
    let shared = Arc::new(Shared {
        revision: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..a.agents {
        let sim = Sim {
            id,
            labels: BTreeMap::new(),
            channel: channels[id % channels.len()].clone(),
            shared: shared.clone(),
            stop: stop_rx.clone(),
            reports: None,
            on_push: None,
        };
        tasks.spawn(sim.run());
    }
    let s = shared.clone();
    let connect = wait_for("initial sync", Duration::from_secs(120), || {
        s.synced.load(Ordering::Relaxed) as usize >= a.agents
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let connected_rss = rss_kib(pid);

    // The change stream: one endpoint's port, at a fixed rate.
    let bytes_before = shared.bytes.load(Ordering::Relaxed);
    let (cp_cpu0, tool_cpu0, all_cpu0, wall0) = (
        cpu(&pid.to_string()),
        cpu("self"),
        machine_cpu(),
        Instant::now(),
    );
    let mut commits = vec![];
    let interval = Duration::from_secs_f64(1.0 / a.rate);
    let mut tick = tokio::time::interval(interval);
    for i in 0..a.changes {
        tick.tick().await;
        let resp = operator
            .apply(pb::ApplyRequest {
                items: vec![endpoint("web-0", "web", 20_000 + i as u32)],
                dry_run: false,
            })
            .await
            .expect("apply change")
            .into_inner();
        commits.push((resp.revision, Instant::now()));
    }
    let last = commits.last().map(|c| c.0).unwrap_or(0);
    let s = shared.clone();
    wait_for(
        "propagation of the last change",
        Duration::from_secs(60),
        || s.revision.iter().all(|r| r.load(Ordering::Relaxed) >= last),
    )
    .await;
    let change_bytes = shared.bytes.load(Ordering::Relaxed) - bytes_before;
    // After the change stream the memory the initial sync used for a
    // moment (snapshots, connection set-up) is back with the allocator:
    // what stays is what each connected agent costs while it is served.
    let steady_rss = rss_kib(pid);
    let wall = wall0.elapsed();
    let (cp_cpu, tool_cpu) = (cpu(&pid.to_string()) - cp_cpu0, cpu("self") - tool_cpu0);
    let other_cpu = (machine_cpu() - all_cpu0).saturating_sub(cp_cpu + tool_cpu);

    // Restart: kill -9 the control plane, start it again on the same port
    // and database, and time until every agent has resynced.
    let snapshots_before = shared.snapshots.load(Ordering::Relaxed);
    cp.kill().await;
    shared.synced.store(0, Ordering::Relaxed);
    let restart = Instant::now();
    let cp = CpProcess::start(db.url(), addr, &[]).await;
    let s = shared.clone();
    wait_for("resync after restart", Duration::from_secs(120), || {
        s.synced.load(Ordering::Relaxed) as usize >= a.agents
    })
    .await;
    let resync = restart.elapsed();
    let resync_snapshots = shared.snapshots.load(Ordering::Relaxed) - snapshots_before;
    let _ = stop_tx.send(true);
    let mut latencies = vec![];
    while let Some(reached) = tasks.join_next().await {
        let reached = reached.expect("agent task");
        for (rev, at) in &commits {
            if let Some((_, got)) = reached.iter().find(|(r, _)| r >= rev) {
                latencies.push(got.saturating_duration_since(*at));
            }
        }
    }
    cp.kill().await;
    latencies.sort();

    let per_agent = |rss: u64| rss.saturating_sub(idle_rss) as f64 * 1024.0 / a.agents as f64;
    println!(
        "sync_load: backend={backend} agents={} connections={connections} changes={} rate={}/s filler_services={}",
        a.agents, a.changes, a.rate, a.filler
    );
    println!("  initial sync of all agents:     {connect:?}");
    println!(
        "  propagation (commit -> agent):  p50 {:?}  p99 {:?}  max {:?}  ({} samples)",
        percentile(&latencies, 0.50),
        percentile(&latencies, 0.99),
        latencies.last().copied().unwrap_or_default(),
        latencies.len()
    );
    println!(
        "  control-plane RSS:              idle {idle_rss} KiB, with agents {connected_rss} KiB, {:.0} B per agent",
        per_agent(connected_rss)
    );
    println!(
        "  ... after the change stream:    {steady_rss} KiB, {:.0} B per agent",
        per_agent(steady_rss)
    );
    println!(
        "  bytes pushed per change:        {:.0} B per agent per change ({} B total)",
        change_bytes as f64 / (a.agents * a.changes) as f64,
        change_bytes
    );
    println!("  resync after kill -9 + restart: {resync:?} (snapshots sent: {resync_snapshots})");
    println!(
        "  CPU during the change stream:   control plane {cp_cpu:?}, load tool {tool_cpu:?}, everything else (Postgres) {other_cpu:?}, over {wall:?} wall (2 cores shared)"
    );
}
