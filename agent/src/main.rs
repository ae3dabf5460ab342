//! `switchyard-agent`: the Switchyard node agent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard::daemon::{self, Listen, LogFormat, parse_listen, terminated};
use switchyard::tls::ClientFiles;
use switchyard_agent::driver::{self, Driver};
use switchyard_agent::{Agent, Config, dns, local, metrics, persist, registration};
use tokio_util::sync::CancellationToken;

/// How long the agent may take to stop after a shutdown signal: the proxy
/// lets requests in flight finish (up to 30 s) before closing.
/// jemalloc instead of the system allocator, told to give memory back
/// (see [`return_memory_promptly`]): glibc's allocator kept what loading a
/// configuration used for a moment (the persisted copy, the candidate being
/// validated), so a restarted agent held 1.4 times the memory of one that
/// had synced from scratch, for the same configuration (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Makes jemalloc return freed pages to the system within about a second,
/// from a background thread, instead of keeping them for reuse for ten
/// seconds or until the next allocation. The agent's big allocations are
/// rare (a configuration change), so nothing is lost by not keeping them.
/// A setting that does not take is logged, not fatal: the agent only holds
/// more memory.
fn return_memory_promptly() {
    use tikv_jemalloc_ctl::{Access, AsName};
    // Arenas made later take `arenas.*`; those that exist (the runtime's
    // threads have allocated by now) are set one by one.
    let arenas = tikv_jemalloc_ctl::arenas::narenas::read().unwrap_or(0);
    let mut keys = vec!["arenas".to_owned()];
    keys.extend((0..arenas).map(|i| format!("arena.{i}")));
    for key in keys {
        for (setting, ms) in [("dirty_decay_ms", 1000isize), ("muzzy_decay_ms", 0)] {
            let name = format!("{key}.{setting}\0");
            if let Err(e) = name.as_bytes().name().write(ms) {
                // An arena index no thread has used yet does not exist:
                // `arenas.*` covers it when it is made.
                let key = name.trim_end_matches('\0');
                if key.starts_with("arenas.") {
                    tracing::warn!(key, error = %e, "allocator setting refused");
                } else {
                    tracing::debug!(key, error = %e, "allocator setting refused");
                }
            }
        }
    }
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "allocator: no background thread");
    }
}

const GRACE: Duration = Duration::from_secs(35);

/// Switchyard node agent: keeps this node's proxy configuration in step with
/// the control plane, and serves the last one it applied while the control
/// plane is unreachable.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// This node's id (default: the host name, lower-cased).
    #[arg(long, env = "SWITCHYARD_NODE_ID")]
    node_id: Option<String>,
    /// A label of this node, `key=value`; repeat for several (the variable
    /// takes a comma-separated list).
    #[arg(long = "label", env = "SWITCHYARD_LABELS", value_delimiter = ',',
          value_parser = parse_label)]
    labels: Vec<(String, String)>,
    /// A control-plane address, `http://HOST:PORT` or (with `--ca-cert`)
    /// `https://HOST:PORT`; repeat for several, tried in order (the variable
    /// takes a comma-separated list).
    #[arg(
        long = "control-plane",
        env = "SWITCHYARD_CONTROL_PLANES",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:7700"
    )]
    control_planes: Vec<String>,
    /// CA certificates (PEM) to check `https://` control planes with.
    #[arg(long, env = "SWITCHYARD_CA_CERT", value_name = "FILE")]
    ca_cert: Option<PathBuf>,
    /// This node's client certificate (PEM) for mutual TLS; its URI SAN
    /// `spiffe://<trust-domain>/node/<node-id>` names the node. Read at each
    /// connection, so a rotated certificate needs no restart.
    #[arg(
        long,
        env = "SWITCHYARD_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of `--tls-cert`.
    #[arg(
        long,
        env = "SWITCHYARD_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    tls_key: Option<PathBuf>,
    /// A file holding this agent's bearer token, sent with every call to
    /// the control plane; read at each connection. A file rather than a
    /// flag keeps the secret out of process listings.
    #[arg(long, env = "SWITCHYARD_TOKEN_FILE", value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Where the last applied configuration is kept.
    #[arg(
        long,
        env = "SWITCHYARD_DATA_DIR",
        default_value = "/var/lib/switchyard-agent"
    )]
    data_dir: PathBuf,
    /// A TOML file declaring the service instances running on this node;
    /// they are registered as endpoints this node owns (and health-checks)
    /// each time the agent connects.
    #[arg(long, env = "SWITCHYARD_SERVICES")]
    services: Option<PathBuf>,
    /// Log format.
    #[arg(
        long,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); `off`
    /// (or an empty value) serves no metrics.
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN", default_value = metrics::DEFAULT_LISTEN,
          value_parser = parse_listen)]
    metrics_listen: Listen,
    /// Serve the metrics port (plaintext, no authentication) beyond
    /// loopback, e.g. for Prometheus and Kubernetes probes (refused otherwise).
    #[arg(long, env = "SWITCHYARD_INSECURE_METRICS")]
    insecure_metrics: bool,
    /// Address of the local registration API (`/v1/registrations`), which
    /// processes on the node use to register themselves; loopback only (it
    /// has no authentication); `off` disables it.
    #[arg(long, env = "SWITCHYARD_API_LISTEN", default_value = "127.0.0.1:9702",
          value_parser = parse_loopback)]
    api_listen: Listen,
    /// Threads the built-in proxy serves traffic on, each with its own
    /// single-threaded runtime (default: one per CPU); 0 serves it on the
    /// agent's own runtime.
    #[arg(long, env = "SWITCHYARD_PROXY_THREADS")]
    proxy_threads: Option<usize>,
    /// The listen backlog of the built-in proxy's listeners: connections
    /// the kernel queues until the proxy accepts them (default: 4096, or
    /// net.core.somaxconn when lower; the kernel caps it at somaxconn).
    #[arg(long, env = "SWITCHYARD_LISTEN_BACKLOG",
          value_parser = clap::value_parser!(u32).range(1..=65535))]
    listen_backlog: Option<u32>,
    /// Address of the DNS interface (UDP and TCP), which answers
    /// `<service>.service.<domain>` with the routable endpoints of the
    /// services this node knows; `off` (or an empty value) disables it.
    #[arg(long, env = "SWITCHYARD_DNS_LISTEN", default_value = dns::DEFAULT_LISTEN,
          value_parser = parse_listen)]
    dns_listen: Listen,
    /// The domain the DNS interface answers for; other names are refused.
    #[arg(long, env = "SWITCHYARD_DNS_DOMAIN", default_value = dns::DEFAULT_DOMAIN,
          value_parser = dns::answer::parse_domain)]
    dns_domain: hickory_proto::rr::Name,
    /// TTL of DNS records, in seconds: how long clients may cache an
    /// answer, and so keep using an endpoint after it left the answers.
    #[arg(long, env = "SWITCHYARD_DNS_TTL", default_value_t = dns::DEFAULT_TTL,
          value_parser = clap::value_parser!(u32).range(0..=3600))]
    dns_ttl: u32,
    /// Most address (A/AAAA) or SRV records in one DNS answer, over UDP
    /// and TCP alike.
    #[arg(long, env = "SWITCHYARD_DNS_RECORD_LIMIT", default_value_t = dns::DEFAULT_RECORD_LIMIT as u64,
          value_parser = clap::value_parser!(u64).range(1..=dns::MAX_RECORD_LIMIT as u64))]
    dns_record_limit: u64,
    /// The data plane the agent drives: its built-in proxy, or a local
    /// HAProxy (rendered `haproxy.cfg`, runtime API, seamless reloads).
    #[arg(long, env = "SWITCHYARD_PROXY", value_enum, default_value = "builtin")]
    proxy: ProxyKind,
    /// The `haproxy` program (`--proxy haproxy`); found on PATH by default.
    #[arg(long, env = "SWITCHYARD_HAPROXY_BIN", default_value = "haproxy")]
    haproxy_bin: PathBuf,
    /// The master socket of a HAProxy started by someone else, to drive
    /// instead of starting one (`--proxy haproxy`).
    #[arg(long, env = "SWITCHYARD_HAPROXY_MASTER_SOCKET", value_name = "PATH")]
    haproxy_master_socket: Option<PathBuf>,
    /// Leave the HAProxy the agent started running when the agent stops,
    /// so that restarting or upgrading the agent interrupts no traffic; the
    /// next agent attaches to it through its master socket.
    #[arg(long, env = "SWITCHYARD_HAPROXY_KEEP_RUNNING")]
    haproxy_keep_running: bool,
    /// Print the configuration saved in the data directory and exit, without
    /// connecting.
    #[arg(long)]
    dump: bool,
}

/// The data planes `--proxy` chooses from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ProxyKind {
    /// The built-in proxy.
    Builtin,
    /// A local HAProxy.
    Haproxy,
}

fn parse_loopback(s: &str) -> Result<Listen, String> {
    let listen = parse_listen(s)?;
    match listen.0 {
        Some(addr) if !addr.ip().is_loopback() => Err(format!(
            "{addr}: the local API has no authentication; use a loopback address such as 127.0.0.1"
        )),
        _ => Ok(listen),
    }
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (key, value) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not key=value"))?;
    Ok((key.trim().to_owned(), value.trim().to_owned()))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.dump {
        let mut out = std::io::stdout().lock();
        return persist::dump(&args.data_dir, &mut out)
            .with_context(|| format!("--data-dir {}", args.data_dir.display()));
    }

    // hickory logs every DNS question at info: per-question logging stays
    // off unless asked for by name (SWITCHYARD_LOG=hickory_server=info).
    daemon::init_logs_quiet(args.log_format, "info", &["hickory_server=warn"]);
    return_memory_promptly();
    if let Err(refusal) = metrics::check_exposure(args.metrics_listen.0, args.insecure_metrics) {
        anyhow::bail!("{refusal}");
    }

    let node_id = match args.node_id {
        Some(id) => id,
        None => host_name().context("--node-id is not set and the host name is unreadable")?,
    };
    let registration = match &args.services {
        Some(path) => Some(registration::load(path, &node_id).context("--services")?),
        None => None,
    };
    // The built-in proxy is the agent's driver: it serves each configuration
    // the agent applies, starting with the one saved on disk, and refuses
    // what it could not serve (a listener that cannot bind).
    let threads = args.proxy_threads.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let mut proxy = switchyard_proxy::Builtin::new().with_threads(threads);
    if let Some(backlog) = args.listen_backlog {
        proxy = proxy.with_backlog(backlog);
    }
    let labels: BTreeMap<String, String> = args.labels.into_iter().collect();
    // The node's zone is preferred by the proxy and DNS alike.
    proxy = proxy.with_zone(labels.get("zone").cloned());
    let shutdown = CancellationToken::new();
    let (driver, outliers, proxy): (Arc<dyn Driver>, _, BoxFuture) = match args.proxy {
        ProxyKind::Builtin => {
            let outliers = proxy.outliers();
            let (builtin, proxy) = driver::Builtin::new(proxy, shutdown.clone());
            (Arc::new(builtin), Some(outliers), Box::pin(proxy))
        }
        ProxyKind::Haproxy => {
            // Every structural change runs `haproxy -c`, also with a
            // HAProxy the agent attaches to: without the program nothing
            // could be applied.
            if driver::find_program(&args.haproxy_bin).is_none() {
                anyhow::bail!(
                    "--haproxy-bin: {} is not a program here (not an executable file, \
                     nor found on PATH); install HAProxy (Debian: apt-get install haproxy) \
                     or name its path",
                    args.haproxy_bin.display()
                );
            }
            std::fs::create_dir_all(&args.data_dir)
                .with_context(|| format!("--data-dir {}", args.data_dir.display()))?;
            let config = driver::haproxy::Config {
                bin: args.haproxy_bin.clone(),
                dir: args.data_dir.clone(),
                master_socket: args.haproxy_master_socket.clone(),
                keep_running: args.haproxy_keep_running,
            };
            let (haproxy, run) = driver::Haproxy::new(config, shutdown.clone());
            (Arc::new(haproxy), None, Box::pin(run))
        }
    };
    let config = Config {
        driver: Some(driver.clone()),
        registration,
        node_id,
        labels: labels.clone(),
        control_planes: args.control_planes,
        tls: ClientFiles {
            ca_cert: args.ca_cert,
            cert: args.tls_cert,
            key: args.tls_key,
        },
        token_file: args.token_file,
        data_dir: args.data_dir,
        ..Config::default()
    };
    if let Err(invalid) = config.validate() {
        let problems: Vec<String> = invalid
            .violations
            .iter()
            .map(|v| format!("{}: {}", flag(&v.field), v.reason))
            .collect();
        anyhow::bail!("invalid configuration: {}", problems.join("; "));
    }

    // Bound before anything starts: a taken port is a configuration error.
    let metrics_listener = match args.metrics_listen.0 {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--metrics-listen {addr}"))?,
        ),
        None => None,
    };

    let api_listener = match args.api_listen.0 {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .with_context(|| format!("--api-listen {addr}"))?,
        ),
        None => None,
    };
    let dns_sockets = match args.dns_listen.0 {
        Some(addr) => Some(
            dns::Sockets::bind(addr)
                .await
                .with_context(|| format!("--dns-listen {addr}"))?,
        ),
        None => None,
    };
    let node_id = config.node_id.clone();

    let agent = Agent::start(config, shutdown.clone())
        .await
        .context("starting the agent")?;
    let mut sources = metrics::Sources::new(&agent, Some(driver));
    let dns = dns_sockets.map(|sockets| {
        let stats = Arc::new(dns::Stats::default());
        sources.dns = Some(stats.clone());
        let config = dns::Config {
            domain: args.dns_domain.clone(),
            ttl: args.dns_ttl,
            record_limit: usize::try_from(args.dns_record_limit).unwrap_or(dns::MAX_RECORD_LIMIT),
        };
        let sources = dns::Sources {
            config: agent.config(),
            health: agent.health(),
            node_id: node_id.clone(),
            labels: labels.clone(),
            outliers,
        };
        tokio::spawn(dns::serve(
            sockets,
            config,
            sources,
            stats,
            shutdown.clone(),
        ))
    });
    let ready = agent.readiness();
    let proxy = tokio::spawn(proxy);
    let metrics = metrics_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving metrics at /metrics");
        }
        let render = move || sources.render();
        tokio::spawn(metrics::serve(listener, render, ready, shutdown.clone()))
    });
    let api = api_listener.map(|listener| {
        if let Ok(addr) = listener.local_addr() {
            tracing::info!(%addr, "serving the registration API at /v1/registrations");
        }
        tokio::spawn(local::serve_registrations(
            listener,
            node_id,
            agent.registrations(),
            shutdown.clone(),
        ))
    });
    terminated().await.context("installing signal handlers")?;
    tracing::info!("shutting down");
    shutdown.cancel();
    let stopped = async {
        let synced = agent.stop().await;
        let proxied = proxy.await;
        if let Some(metrics) = metrics {
            metrics.await.context("metrics server failed")?;
        }
        if let Some(api) = api {
            api.await.context("registration API failed")?;
        }
        if let Some(dns) = dns {
            dns.await
                .context("DNS interface failed")?
                .context("DNS interface failed")?;
        }
        synced.context("agent failed")?;
        proxied.context("proxy failed")
    };
    match tokio::time::timeout(GRACE, stopped).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!("the agent did not stop within {GRACE:?}"),
    }
}

/// A data plane's run future, whichever runs.
type BoxFuture = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// The flag that sets a configuration field, for error messages.
fn flag(field: &str) -> String {
    let flags = [
        ("node_id", "--node-id"),
        ("labels", "--label"),
        ("control_planes", "--control-plane"),
        ("tls.ca_cert", "--ca-cert"),
        ("tls.cert", "--tls-cert"),
        ("tls.key", "--tls-key"),
        ("token_file", "--token-file"),
        ("data_dir", "--data-dir"),
    ];
    for (prefix, flag) in flags {
        if let Some(rest) = field.strip_prefix(prefix) {
            return format!("{flag}{rest}");
        }
    }
    field.to_owned()
}

/// The host name, lower-cased (host names are case-insensitive; node ids
/// are lower case).
fn host_name() -> std::io::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_lowercase())
}
