//! `switchyard-cp`: the Switchyard control-plane server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard::daemon::{self, Listen, LogFormat, parse_listen, terminated};
use switchyard::tls::{self, ServerFiles};
use switchyard_control_plane::{auth, health, metrics, server};
use tokio_util::sync::CancellationToken;

/// jemalloc instead of the system allocator: with ten thousand agent
/// streams, a change is ten thousand pushes and Acks, each allocating and
/// freeing small buffers on whichever worker thread runs it. jemalloc's
/// per-thread caches cut the control plane's CPU per push by about a tenth
/// and its memory per agent a little (BENCHMARKS.md has the figures).
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// How long in-flight calls may take to finish after a shutdown signal.
const GRACE: Duration = Duration::from_secs(10);

/// Switchyard control plane: stores services, endpoints and routes, and
/// serves them to operators and agents over gRPC.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the gRPC port (operator API, health, reflection).
    #[arg(long, env = "SWITCHYARD_LISTEN", default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// Store: `sqlite://FILE` (embedded, one replica) or `postgres://USER@HOST/DB`
    /// (production, several replicas).
    #[arg(
        long,
        env = "SWITCHYARD_DATABASE_URL",
        default_value = "sqlite://switchyard.db"
    )]
    database_url: String,
    /// Log format.
    #[arg(
        long,
        env = "SWITCHYARD_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
    /// This replica's name in node status (default: host name and port).
    #[arg(long, env = "SWITCHYARD_REPLICA")]
    replica: Option<String>,
    /// Revisions kept in the change log; watchers further behind must list again.
    #[arg(long, env = "SWITCHYARD_CHANGE_LOG_RETENTION", default_value_t = 100_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    change_log_retention: u64,
    /// A node whose agent has had no stream for this long is marked
    /// disconnected, and the endpoints it checks become `unknown`.
    #[arg(long, env = "SWITCHYARD_NODE_LEASE", default_value = "30s",
          value_parser = parse_positive_duration)]
    node_lease: Duration,
    /// Flap damping: the half-life of an endpoint's flap penalty (each
    /// reported health change adds 1); `0s` disables damping.
    #[arg(long, env = "SWITCHYARD_FLAP_HALF_LIFE", default_value = "30s",
          value_parser = humantime::parse_duration)]
    flap_half_life: Duration,
    /// Flap damping: the penalty at which an endpoint is held unhealthy; it
    /// is released when the penalty decays below 40% of this.
    #[arg(long, env = "SWITCHYARD_FLAP_SUPPRESS", default_value_t = 5.0)]
    flap_suppress: f64,
    /// Address of the Prometheus metrics endpoint (`GET /metrics`); `off`
    /// (or an empty value) serves no metrics.
    #[arg(long, env = "SWITCHYARD_METRICS_LISTEN", default_value = metrics::DEFAULT_LISTEN,
          value_parser = parse_listen)]
    metrics_listen: Listen,
    /// Authentication: `on` requires a bearer token or an agent's client
    /// certificate on every call (but gRPC health) and checks its role.
    /// Default: `off` only on a loopback address without TLS, else `on`.
    #[arg(long, env = "SWITCHYARD_AUTH", value_enum)]
    auth: Option<OnOff>,
    /// With authentication on and no token in the store: create the first
    /// admin token and write its secret to this new file (mode 0600; an
    /// existing file is never overwritten). Does nothing once tokens exist.
    #[arg(long, env = "SWITCHYARD_BOOTSTRAP_TOKEN_FILE", value_name = "PATH")]
    bootstrap_token_file: Option<PathBuf>,
    /// Serve gRPC beyond loopback without TLS (refused otherwise).
    #[arg(long, env = "SWITCHYARD_INSECURE_PLAINTEXT")]
    insecure_plaintext: bool,
    /// Serve gRPC beyond loopback with `--auth off` (refused otherwise).
    #[arg(long, env = "SWITCHYARD_INSECURE_NO_AUTH")]
    insecure_no_auth: bool,
    /// Serve the metrics port (plaintext, no authentication) beyond
    /// loopback, e.g. for Prometheus and Kubernetes probes (refused otherwise).
    #[arg(long, env = "SWITCHYARD_INSECURE_METRICS")]
    insecure_metrics: bool,
    /// Most Watch and Sync streams open at once on one connection.
    #[arg(long, env = "SWITCHYARD_MAX_STREAMS_PER_CONNECTION", default_value_t = 100,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_connection: u32,
    /// Most Watch and Sync streams open at once for one principal (a token,
    /// or a node's certificate) on this replica; anonymous callers are
    /// bounded per connection only.
    #[arg(long, env = "SWITCHYARD_MAX_STREAMS_PER_PRINCIPAL", default_value_t = 1000,
          value_parser = clap::value_parser!(u32).range(1..))]
    max_streams_per_principal: u32,
    /// The gRPC port's TLS certificate chain (PEM); with `--tls-key`, the
    /// port serves TLS only. Re-read when the file changes or on SIGHUP, so
    /// certificates rotate without a restart.
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
    /// CA certificates (PEM) for mutual TLS: every client must present a
    /// certificate they issued. Needs `--tls-cert`.
    #[arg(
        long,
        env = "SWITCHYARD_CLIENT_CA",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    client_ca: Option<PathBuf>,
    /// How long a new connection may take to finish its TLS handshake (or,
    /// on a plaintext port, to send the HTTP/2 preface) before it is dropped.
    #[arg(long, env = "SWITCHYARD_HANDSHAKE_TIMEOUT", default_value = "10s",
          value_parser = parse_positive_duration)]
    handshake_timeout: Duration,
    /// How often an HTTP/2 PING is sent on each client connection that has
    /// been quiet that long; `0s` sends none. With `--keepalive-timeout`, a
    /// dead peer's connection and streams are freed within the sum.
    #[arg(long, env = "SWITCHYARD_KEEPALIVE_INTERVAL", default_value = "30s",
          value_parser = humantime::parse_duration)]
    keepalive_interval: Duration,
    /// How long a client may take to answer a PING before its connection
    /// is closed.
    #[arg(long, env = "SWITCHYARD_KEEPALIVE_TIMEOUT", default_value = "10s",
          value_parser = parse_positive_duration)]
    keepalive_timeout: Duration,
    /// Largest request message a client may send (an Apply of many
    /// resources): bytes, or with a unit (`512KiB`, `16MiB`; at least
    /// 64KiB, at most 1GiB). A larger request is refused with
    /// RESOURCE_EXHAUSTED naming the limit.
    #[arg(long, env = "SWITCHYARD_MAX_REQUEST_SIZE", default_value = "4MiB",
          value_name = "SIZE", value_parser = parse_size)]
    max_request_size: usize,
}

/// A switch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// A server error, with a TLS file's error naming the flag that set it.
fn named(error: server::Error) -> anyhow::Error {
    match error {
        server::Error::Tls(error) => {
            let flag = match error.file() {
                Some(tls::File::Key) => "--tls-key",
                Some(tls::File::ClientCa | tls::File::CaCert) => "--client-ca",
                Some(tls::File::Cert) | None => "--tls-cert",
            };
            anyhow::anyhow!("{flag}: {error}")
        }
        error => error.into(),
    }
}

/// `4194304`, `4096KiB`, `4MiB` (also `4M`, `4MB`: binary units all).
fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let number: usize = number
        .parse()
        .map_err(|_| format!("{s:?} is not a size: use bytes or a unit, e.g. 4MiB"))?;
    let scale: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return Err(format!("unknown unit in {s:?}: use KiB, MiB or GiB")),
    };
    let bytes = number
        .checked_mul(scale)
        .ok_or_else(|| format!("{s:?} is too large"))?;
    if !(64 << 10..=1 << 30).contains(&bytes) {
        return Err(format!("{s:?} is not between 64KiB and 1GiB"));
    }
    Ok(bytes)
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be positive".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    daemon::init_logs(args.log_format, "info");

    let replica = args.replica.unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}:{}", host.trim(), args.listen.port())
    });
    let tls = args.tls_cert.is_some();
    let enforce = match args.auth {
        Some(OnOff::On) => true,
        Some(OnOff::Off) => false,
        None => auth::default_enforce(args.listen, tls),
    };
    let insecure = auth::Insecure {
        plaintext: args.insecure_plaintext,
        no_auth: args.insecure_no_auth,
        metrics: args.insecure_metrics,
    };
    if let Err(refusal) =
        auth::check_exposure(args.listen, tls, enforce, args.metrics_listen.0, insecure)
    {
        anyhow::bail!("{refusal}");
    }
    if !args.listen.ip().is_loopback() && (!tls || !enforce) {
        tracing::warn!(listen = %args.listen, tls, auth = enforce, "serving beyond loopback with security turned off by an --insecure-* flag");
    }
    let config = server::Config {
        auth: auth::Config {
            enforce,
            max_streams_per_connection: args.max_streams_per_connection as usize,
            max_streams_per_principal: args.max_streams_per_principal as usize,
        },
        bootstrap_token_file: args.bootstrap_token_file,
        replica,
        listen: args.listen,
        database_url: args.database_url,
        change_log_retention: args.change_log_retention,
        node_lease: args.node_lease,
        metrics_listen: args.metrics_listen.0,
        tls: args
            .tls_cert
            .zip(args.tls_key)
            .map(|(cert, key)| ServerFiles {
                cert,
                key,
                client_ca: args.client_ca,
            }),
        handshake_timeout: args.handshake_timeout,
        keepalive_interval: (!args.keepalive_interval.is_zero()).then_some(args.keepalive_interval),
        keepalive_timeout: args.keepalive_timeout,
        max_request_bytes: args.max_request_size,
        damping: health::Damping {
            half_life: args.flap_half_life,
            suppress: args.flap_suppress,
            reuse: args.flap_suppress * 0.4,
        },
        ..server::Config::default()
    };
    config
        .damping
        .validate("flap")
        .context("invalid --flap-suppress")?;
    let shutdown = CancellationToken::new();
    let mut server = std::pin::pin!(server::run(config, shutdown.clone()));
    tokio::select! {
        result = &mut server => return result.map_err(named).context("control plane failed"),
        signal = terminated() => {
            signal.context("installing signal handlers")?;
            tracing::info!("shutting down");
            shutdown.cancel();
        }
    }
    match tokio::time::timeout(GRACE, server).await {
        Ok(result) => result.map_err(named).context("control plane failed"),
        Err(_) => anyhow::bail!("in-flight calls did not finish within {GRACE:?}"),
    }
}
