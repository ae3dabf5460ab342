//! Load tool for the agent stream: N simulated agents on real gRPC streams
//! against one `switchyard-cp` process, a stream of endpoint changes, and a
//! control-plane restart.
//!
//! Reports propagation latency (write acknowledged → delta received at every
//! agent), control-plane RSS per connected agent, bytes pushed per change,
//! the control plane's CPU while the agents connect and during the changes,
//! and the time for every agent to resync after a `kill -9` and restart.
//!
//! Each simulated agent has its own HTTP/2 connection, as real agents do;
//! `--connections N` multiplexes their streams over N connections instead.
//!
//! `--tls` runs the control plane with mutual TLS and authentication on, as
//! it runs on a real network: every agent presents its own client
//! certificate naming its node (so it is the `agent` principal of that node
//! only), and the operator's writes carry the bootstrap admin token.
//! `--compare-tls` runs `--rounds` rounds of each, plaintext and TLS
//! alternating (P T T P P T …, so that drift on a shared machine hits both),
//! each on a fresh database and a fresh control plane, and ends with the
//! medians, ranges and TLS/plaintext ratios.
//!
//! Run through `scripts/bench-sync` (builds the release binary, finds
//! Postgres), or directly:
//! `cargo bench -p switchyard-control-plane --bench sync_load -- --agents 10000`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use switchyard::pb;
use switchyard::pb::operator_service_client::OperatorServiceClient;
use switchyard::tls::testing::Ca;
use switchyard_control_plane::testing::fixtures::{self, item, route_to, service};
use switchyard_control_plane::testing::{CpProcess, TempDir, TestDb};
use tokio::sync::watch;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

mod load;
use load::{Shared, Sim, connection_count, cpu, machine_cpu, percentile, tcp_ext, wait_for};

/// How often simulated agents send a heartbeat: the agent's default
/// (`heartbeat_interval` in `agent/src/sync.rs`).
const HEARTBEAT: Duration = Duration::from_secs(10);

struct Args {
    agents: usize,
    changes: usize,
    rate: f64,
    /// HTTP/2 connections the agents' streams share; `None`: one per agent,
    /// as real agents connect.
    connections: Option<usize>,
    filler: usize,
    sqlite: bool,
    tls: bool,
    compare_tls: bool,
    rounds: usize,
}

fn parse(all: Vec<String>) -> Args {
    let mut a = Args {
        agents: 1000,
        changes: 100,
        rate: 20.0,
        connections: None,
        filler: 0,
        sqlite: false,
        tls: false,
        compare_tls: false,
        rounds: 1,
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
            "--tls" => a.tls = true,
            "--compare-tls" => a.compare_tls = true,
            "--rounds" => a.rounds = value().parse().expect("--rounds"),
            other => panic!(
                "unknown flag {other}; flags: --agents --changes --rate --connections --filler \
                 --sqlite --tls --compare-tls --rounds"
            ),
        }
    }
    assert!(
        !((a.tls || a.compare_tls) && a.connections.is_some()),
        "--connections cannot be used with TLS: each agent's certificate names its node, \
         so each agent has its own connection"
    );
    assert!(a.rounds >= 1, "--rounds must be at least 1");
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

/// The certificates of a mutual-TLS run, made once per invocation and used
/// by every TLS round.
struct Pki {
    dir: TempDir,
    cert: PathBuf,
    key: PathBuf,
    client_ca: PathBuf,
    ca_pem: String,
    /// The operator's client certificate: it names no node; its calls carry
    /// the admin token, which is their principal.
    operator: Identity,
    /// Agent `i`'s certificate names node `node-i`.
    agents: Vec<Identity>,
}

impl Pki {
    /// A CA, the control plane's certificate and one client certificate per
    /// agent (ECDSA P-256 keys, made on every core: 10,000 take a few
    /// seconds, not counted in any figure).
    fn new(agents: usize) -> Pki {
        let started = Instant::now();
        let dir = TempDir::new();
        let ca = Ca::new("switchyard bench CA");
        let (cert, key) = ca.server("switchyard-cp").write(dir.path(), "server");
        let client_ca = ca.write(dir.path(), "client-ca");
        let identity =
            |pair: switchyard::tls::testing::Pair| Identity::from_pem(pair.cert_pem, pair.key_pem);
        let operator = identity(ca.client(None));
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per_thread = agents.div_ceil(threads).max(1);
        let agents: Vec<Identity> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..agents)
                .step_by(per_thread)
                .map(|from| {
                    let ca = &ca;
                    scope.spawn(move || {
                        (from..(from + per_thread).min(agents))
                            .map(|id| identity(ca.client(Some(&format!("node-{id}")))))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().expect("certificate thread"))
                .collect()
        });
        eprintln!(
            "==> {} client certificates issued in {:?}",
            agents.len(),
            started.elapsed()
        );
        Pki {
            dir,
            cert,
            key,
            client_ca,
            ca_pem: ca.cert_pem.clone(),
            operator,
            agents,
        }
    }

    /// An endpoint for `url` trusting the CA and presenting `identity`.
    fn endpoint(&self, url: &str, identity: Identity) -> Endpoint {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(identity);
        Endpoint::from_shared(url.to_owned())
            .expect("URL")
            .tls_config(tls)
            .expect("client TLS configuration")
    }
}

/// Adds the operator's bearer token, if there is one, to every call.
#[derive(Clone)]
struct Bearer(Option<MetadataValue<Ascii>>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

type Operator = OperatorServiceClient<InterceptedService<Channel, Bearer>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Plaintext,
    Tls,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Plaintext => "plaintext",
            Mode::Tls => "mTLS",
        }
    }
}

/// What one round measured.
struct Figures {
    mode: Mode,
    connect: Duration,
    connect_cp_cpu: Duration,
    connect_tool_cpu: Duration,
    connect_overflows: u64,
    connect_failures: u64,
    p50: Duration,
    p99: Duration,
    max: Duration,
    samples: usize,
    idle_rss: u64,
    connected_rss: u64,
    steady_rss: u64,
    change_bytes: u64,
    change_cp_cpu: Duration,
    change_tool_cpu: Duration,
    change_other_cpu: Duration,
    change_wall: Duration,
    heartbeats: u64,
    nodes_listed: usize,
    nodes_disconnected: usize,
    resync: Duration,
    resync_snapshots: u64,
    resync_cp_cpu: Duration,
    resync_overflows: u64,
    resync_failures: u64,
}

impl Figures {
    /// Control-plane RSS per agent, in bytes, above the idle process.
    fn per_agent(&self, rss: u64, agents: usize) -> f64 {
        rss.saturating_sub(self.idle_rss) as f64 * 1024.0 / agents as f64
    }
}

/// Starts `switchyard-cp` for `mode` on `listen` and returns it with the
/// operator's token (TLS rounds).
async fn start_cp(
    db: &TestDb,
    listen: std::net::SocketAddr,
    mode: Mode,
    a: &Args,
    pki: Option<&Pki>,
    token_file: &std::path::Path,
) -> CpProcess {
    let mut extra: Vec<String> = vec![];
    match mode {
        Mode::Plaintext => {
            // Anonymous streams are bounded per connection only; streams
            // multiplexed over a few connections need a higher bound.
            if a.connections.is_some() {
                extra.extend(["--max-streams-per-connection".into(), "1000000".into()]);
            }
        }
        Mode::Tls => {
            // Default limits: each agent is its own principal (`node/<id>`)
            // with one stream on its own connection.
            let pki = pki.expect("PKI for TLS");
            extra.extend([
                "--tls-cert".into(),
                pki.cert.display().to_string(),
                "--tls-key".into(),
                pki.key.display().to_string(),
                "--client-ca".into(),
                pki.client_ca.display().to_string(),
                "--auth".into(),
                "on".into(),
                "--bootstrap-token-file".into(),
                token_file.display().to_string(),
            ]);
        }
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    CpProcess::start(db.url(), listen, &extra).await
}

/// One round: a fresh database and control plane, N agents, the change
/// stream, a `kill -9` and the resync.
async fn round(a: &Args, mode: Mode, pki: Option<&Pki>, number: usize) -> Figures {
    let db = if a.sqlite {
        TestDb::sqlite()
    } else {
        TestDb::postgres().await
    };
    let token_file = pki.map_or_else(PathBuf::new, |p| {
        p.dir.path().join(format!("admin-{number}.token"))
    });
    let cp = start_cp(
        &db,
        "127.0.0.1:0".parse().unwrap(),
        mode,
        a,
        pki,
        &token_file,
    )
    .await;
    let addr = cp.addr;
    let (url, bearer) = match mode {
        Mode::Plaintext => (format!("http://{addr}"), Bearer(None)),
        Mode::Tls => {
            // The bootstrap token is written before the control plane
            // listens.
            let token = std::fs::read_to_string(&token_file).expect("bootstrap token file");
            let value = format!("Bearer {}", token.trim()).parse().expect("token");
            (
                format!("https://127.0.0.1:{}", addr.port()),
                Bearer(Some(value)),
            )
        }
    };
    let operator_endpoint = match (mode, pki) {
        (Mode::Tls, Some(pki)) => pki.endpoint(&url, pki.operator.clone()),
        _ => Endpoint::from_shared(url.clone()).expect("URL"),
    };
    let mut operator: Operator = OperatorServiceClient::with_interceptor(
        operator_endpoint
            .connect()
            .await
            .expect("operator connects"),
        bearer,
    )
    .max_decoding_message_size(64 << 20);
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

    let channels: Vec<Channel> = match (mode, pki) {
        (Mode::Tls, Some(pki)) => pki.agents[..a.agents]
            .iter()
            .map(|identity| {
                pki.endpoint(&url, identity.clone())
                    .http2_adaptive_window(false)
                    .connect_lazy()
            })
            .collect(),
        _ => (0..connection_count(a.connections, a.agents))
            .map(|_| {
                Endpoint::from_shared(url.clone())
                    .unwrap()
                    .http2_adaptive_window(false)
                    .connect_lazy()
            })
            .collect(),
    };
    let shared = Arc::new(Shared {
        revision: (0..a.agents).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    });
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = tokio::task::JoinSet::new();
    let (cp_cpu0, tool_cpu0, overflows0) = (
        cpu(&pid.to_string()),
        cpu("self"),
        tcp_ext("ListenOverflows"),
    );
    for id in 0..a.agents {
        let sim = Sim {
            id,
            labels: BTreeMap::new(),
            channel: channels[id % channels.len()].clone(),
            shared: shared.clone(),
            stop: stop_rx.clone(),
            reports: None,
            on_push: None,
            heartbeat: Some(HEARTBEAT),
        };
        tasks.spawn(sim.run());
    }
    drop(channels);
    let s = shared.clone();
    let connect = wait_for("initial sync", Duration::from_secs(180), || {
        s.synced.load(Ordering::Relaxed) as usize >= a.agents
    })
    .await;
    let connect_cp_cpu = cpu(&pid.to_string()) - cp_cpu0;
    let connect_tool_cpu = cpu("self") - tool_cpu0;
    let connect_overflows = tcp_ext("ListenOverflows") - overflows0;
    let connect_failures = shared.failures.load(Ordering::Relaxed);
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
    let change_wall = wall0.elapsed();
    let (change_cp_cpu, change_tool_cpu) =
        (cpu(&pid.to_string()) - cp_cpu0, cpu("self") - tool_cpu0);
    let change_other_cpu =
        (machine_cpu() - all_cpu0).saturating_sub(change_cp_cpu + change_tool_cpu);
    let heartbeats = shared.heartbeats.load(Ordering::Relaxed);

    // No agent may have been taken for gone: every node connected.
    let nodes = operator
        .list_nodes(pb::ListNodesRequest::default())
        .await
        .expect("list nodes")
        .into_inner()
        .nodes;
    let nodes_listed = nodes.len();
    let nodes_disconnected = nodes.iter().filter(|n| !n.connected).count();

    // Restart: kill -9 the control plane, start it again on the same port
    // and database, and time until every agent has resynced.
    drop(operator);
    let snapshots_before = shared.snapshots.load(Ordering::Relaxed);
    let failures_before = shared.failures.load(Ordering::Relaxed);
    cp.kill().await;
    shared.synced.store(0, Ordering::Relaxed);
    let overflows0 = tcp_ext("ListenOverflows");
    let restart = Instant::now();
    let cp = start_cp(&db, addr, mode, a, pki, &token_file).await;
    let s = shared.clone();
    wait_for("resync after restart", Duration::from_secs(180), || {
        s.synced.load(Ordering::Relaxed) as usize >= a.agents
    })
    .await;
    let resync = restart.elapsed();
    let resync_cp_cpu = cpu(&cp.child.id().expect("pid").to_string());
    let resync_overflows = tcp_ext("ListenOverflows") - overflows0;
    let resync_failures = shared.failures.load(Ordering::Relaxed) - failures_before;
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
    Figures {
        mode,
        connect,
        connect_cp_cpu,
        connect_tool_cpu,
        connect_overflows,
        connect_failures,
        p50: percentile(&latencies, 0.50),
        p99: percentile(&latencies, 0.99),
        max: latencies.last().copied().unwrap_or_default(),
        samples: latencies.len(),
        idle_rss,
        connected_rss,
        steady_rss,
        change_bytes,
        change_cp_cpu,
        change_tool_cpu,
        change_other_cpu,
        change_wall,
        heartbeats,
        nodes_listed,
        nodes_disconnected,
        resync,
        resync_snapshots,
        resync_cp_cpu,
        resync_overflows,
        resync_failures,
    }
}

fn print_round(a: &Args, f: &Figures, backend: &str, connections: usize) {
    println!(
        "sync_load: {} backend={backend} agents={} connections={connections} changes={} rate={}/s filler_services={}",
        f.mode.name(),
        a.agents,
        a.changes,
        a.rate,
        a.filler
    );
    println!(
        "  initial sync of all agents:     {:?}  (control plane CPU {:?}, load tool {:?}; failed attempts {}, listen overflows {})",
        f.connect, f.connect_cp_cpu, f.connect_tool_cpu, f.connect_failures, f.connect_overflows
    );
    println!(
        "  propagation (commit -> agent):  p50 {:?}  p99 {:?}  max {:?}  ({} samples)",
        f.p50, f.p99, f.max, f.samples
    );
    println!(
        "  control-plane RSS:              idle {} KiB, with agents {} KiB, {:.0} B per agent",
        f.idle_rss,
        f.connected_rss,
        f.per_agent(f.connected_rss, a.agents)
    );
    println!(
        "  ... after the change stream:    {} KiB, {:.0} B per agent",
        f.steady_rss,
        f.per_agent(f.steady_rss, a.agents)
    );
    println!(
        "  bytes pushed per change:        {:.0} B per agent per change ({} B total)",
        f.change_bytes as f64 / (a.agents * a.changes).max(1) as f64,
        f.change_bytes
    );
    println!(
        "  CPU during the change stream:   control plane {:?}, load tool {:?}, everything else (Postgres) {:?}, over {:?} wall (2 cores shared)",
        f.change_cp_cpu, f.change_tool_cpu, f.change_other_cpu, f.change_wall
    );
    println!(
        "  nodes after the changes:        {} listed, {} disconnected ({} heartbeats sent)",
        f.nodes_listed, f.nodes_disconnected, f.heartbeats
    );
    println!(
        "  resync after kill -9 + restart: {:?} (snapshots sent: {}; control plane CPU {:?}; failed attempts {}, listen overflows {})",
        f.resync, f.resync_snapshots, f.resync_cp_cpu, f.resync_failures, f.resync_overflows
    );
}

/// Median and range of `values`, for the summary.
fn spread(mut values: Vec<f64>) -> (f64, f64, f64) {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    let median = if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    };
    (median, values[0], values[n - 1])
}

/// The medians, ranges and TLS/plaintext ratios of a `--compare-tls` run.
fn print_comparison(a: &Args, all: &[Figures]) {
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    type Metric<'a> = (&'a str, &'a str, Box<dyn Fn(&Figures) -> f64>);
    let agents = a.agents;
    let metrics: Vec<Metric> = vec![
        (
            "initial sync of all agents",
            "ms",
            Box::new(move |f| ms(f.connect)),
        ),
        (
            "control-plane CPU while connecting",
            "ms",
            Box::new(move |f| ms(f.connect_cp_cpu)),
        ),
        (
            "load-tool CPU while connecting",
            "ms",
            Box::new(move |f| ms(f.connect_tool_cpu)),
        ),
        ("propagation p50", "ms", Box::new(move |f| ms(f.p50))),
        ("propagation p99", "ms", Box::new(move |f| ms(f.p99))),
        ("propagation max", "ms", Box::new(move |f| ms(f.max))),
        (
            "CP RSS per agent, connected",
            "B",
            Box::new(move |f| f.per_agent(f.connected_rss, agents)),
        ),
        (
            "CP RSS per agent, after the changes",
            "B",
            Box::new(move |f| f.per_agent(f.steady_rss, agents)),
        ),
        (
            "control-plane CPU during the changes",
            "ms",
            Box::new(move |f| ms(f.change_cp_cpu)),
        ),
        (
            "load-tool CPU during the changes",
            "ms",
            Box::new(move |f| ms(f.change_tool_cpu)),
        ),
        (
            "resync after kill -9",
            "ms",
            Box::new(move |f| ms(f.resync)),
        ),
        (
            "control-plane CPU until resynced",
            "ms",
            Box::new(move |f| ms(f.resync_cp_cpu)),
        ),
        (
            "listen overflows while connecting",
            "",
            Box::new(|f| f.connect_overflows as f64),
        ),
        (
            "listen overflows during the resync",
            "",
            Box::new(|f| f.resync_overflows as f64),
        ),
        (
            "failed stream attempts during the resync",
            "",
            Box::new(|f| f.resync_failures as f64),
        ),
        (
            "nodes disconnected after the changes",
            "",
            Box::new(|f| f.nodes_disconnected as f64),
        ),
    ];
    let rounds = |mode| all.iter().filter(move |f: &&Figures| f.mode == mode);
    println!(
        "sync_load comparison: {} agents, {} rounds of each, median [min – max]",
        a.agents, a.rounds
    );
    println!(
        "  {:<42} {:>26} {:>26} {:>8}",
        "", "plaintext", "mTLS", "TLS/pt"
    );
    let mut medians = BTreeMap::new();
    for (name, unit, get) in &metrics {
        let p = spread(rounds(Mode::Plaintext).map(get).collect());
        let t = spread(rounds(Mode::Tls).map(get).collect());
        medians.insert(*name, (p.0, t.0));
        let cell = |(m, lo, hi): (f64, f64, f64)| format!("{m:.1} [{lo:.1} – {hi:.1}] {unit}");
        let ratio = if p.0 > 0.0 {
            format!("{:.2}", t.0 / p.0)
        } else {
            "-".into()
        };
        println!("  {name:<42} {:>26} {:>26} {ratio:>8}", cell(p), cell(t));
    }
    let (p, t) = medians["control-plane CPU while connecting"];
    println!(
        "  handshake: {:.3} ms of control-plane CPU per agent (median CPU while connecting, mTLS minus plaintext, over {} agents)",
        (t - p) / agents as f64,
        agents
    );
    let (p, t) = medians["CP RSS per agent, connected"];
    let (ps, ts) = medians["CP RSS per agent, after the changes"];
    println!(
        "  TLS memory per connection: {:.0} B once connected, {:.0} B after the changes (medians, mTLS minus plaintext)",
        t - p,
        ts - ps
    );
}

#[tokio::main]
async fn main() {
    let Some(a) = load::bench_args("sync_load").map(parse) else {
        return;
    };
    let backend = if a.sqlite { "sqlite" } else { "postgres" };
    let connections = connection_count(a.connections, a.agents);
    let modes: Vec<Mode> = if a.compare_tls {
        // P T, T P, P T, …: each mode goes first in half the pairs.
        (0..a.rounds)
            .flat_map(|r| {
                if r % 2 == 0 {
                    [Mode::Plaintext, Mode::Tls]
                } else {
                    [Mode::Tls, Mode::Plaintext]
                }
            })
            .collect()
    } else if a.tls {
        vec![Mode::Tls; a.rounds]
    } else {
        vec![Mode::Plaintext; a.rounds]
    };
    let pki = modes.contains(&Mode::Tls).then(|| Pki::new(a.agents));
    let total = modes.len();
    let mut all = vec![];
    for (number, mode) in modes.into_iter().enumerate() {
        eprintln!("==> round {} of {total}: {}", number + 1, mode.name());
        let figures = round(&a, mode, pki.as_ref(), number).await;
        print_round(&a, &figures, backend, connections);
        all.push(figures);
    }
    if a.compare_tls {
        print_comparison(&a, &all);
    }
}
