//! `yard-demo`: Switchyard on one machine with one command. It runs the
//! control plane, an agent with the built-in proxy and three demo backends
//! in this process, applies the demo's manifests, and prints what to try.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use switchyard_demo::{Config, Demo};
use tokio_util::sync::CancellationToken;

/// How long everything may take to stop after Ctrl-C.
const GRACE: Duration = Duration::from_secs(10);

/// Switchyard's local demo: a control plane, an agent with the built-in proxy
/// and three demo backends, in one process on loopback.
///
/// Round robin and a 90/10 canary are configured from the start, and the
/// instructions printed say what to try. Ctrl-C stops everything.
#[derive(Debug, Parser)]
#[command(version)]
struct Args {
    /// The control plane's gRPC address, for `yardctl --server`.
    #[arg(long, default_value = "127.0.0.1:7700")]
    listen: SocketAddr,
    /// The first of the two proxy listener ports on 127.0.0.1 (round robin,
    /// then the canary on the next port); 0 picks any two free ports.
    #[arg(long, default_value_t = 8080)]
    port_base: u16,
    /// Keep the store and the agent's configuration in this directory
    /// (default: a temporary directory, removed at exit).
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Quiet by default: the demo's own output is on stdout; warnings and
    // errors go to stderr (`SWITCHYARD_LOG=info` shows more).
    switchyard::daemon::init_logs(switchyard::daemon::LogFormat::Text, "warn");

    let config = Config {
        listen: args.listen,
        port_base: args.port_base,
        data_dir: args.data_dir,
        ..Config::default()
    };
    let shutdown = CancellationToken::new();
    let mut signal = std::pin::pin!(switchyard::daemon::terminated());

    // A signal while starting cancels the start, which stops what it
    // started before returning.
    let mut start = std::pin::pin!(Demo::start(config, shutdown.clone()));
    let started = loop {
        tokio::select! {
            started = &mut start => break started,
            received = &mut signal, if !shutdown.is_cancelled() => {
                received.context("installing signal handlers")?;
                shutdown.cancel();
            }
        }
    };
    let demo = match started {
        Ok(demo) => demo,
        Err(error) if error.is_cancelled() => return Ok(()),
        Err(error) => return Err(error).context("the demo did not start"),
    };
    println!("{}", demo.ready());

    let mut stopped = std::pin::pin!(demo.wait());
    if !shutdown.is_cancelled() {
        tokio::select! {
            result = &mut stopped => return result.context("the demo failed"),
            received = &mut signal => {
                received.context("installing signal handlers")?;
                shutdown.cancel();
            }
        }
    }
    eprintln!("stopping (Ctrl-C again to stop at once)");
    tokio::select! {
        result = tokio::time::timeout(GRACE, stopped) => match result {
            Ok(result) => result.context("the demo failed while stopping"),
            Err(_) => anyhow::bail!("the demo did not stop within {GRACE:?}"),
        },
        _ = tokio::signal::ctrl_c() => anyhow::bail!("stopped at once by a second Ctrl-C"),
    }
}
