//! What the daemons (`switchyard-cp`, `switchyard-agent`, `yard-demo`)
//! share at start and stop: log set-up, listen-address flags, and the
//! signal that starts a clean shutdown. Behind the `daemon` feature, so that
//! API clients do not build it.

use std::net::SocketAddr;

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    Text,
    /// One JSON object per event.
    Json,
}

/// Sends `tracing` events to stderr in `format`, filtered by the
/// `SWITCHYARD_LOG` variable (e.g. `debug`), else by `default_filter`.
pub fn init_logs(format: LogFormat, default_filter: &str) {
    init_logs_quiet(format, default_filter, &[]);
}

/// Like [`init_logs`], with `quiet` directives (`target=level`) added to
/// whatever filter applies, unless `SWITCHYARD_LOG` names their target
/// itself: for libraries that log every request at info.
pub fn init_logs_quiet(format: LogFormat, default_filter: &str, quiet: &[&str]) {
    let asked = std::env::var("SWITCHYARD_LOG").ok();
    let mut filter = tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_filter));
    for directive in quiet {
        let target = directive.split('=').next().unwrap_or(directive);
        if asked.as_deref().is_some_and(|a| a.contains(target)) {
            continue;
        }
        if let Ok(d) = directive.parse() {
            filter = filter.add_directive(d);
        }
    }
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

/// An address to listen on, or none (a flag set to `off` or empty).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

/// Parses a listen flag: `HOST:PORT`, or `off` / empty for none.
pub fn parse_listen(s: &str) -> Result<Listen, String> {
    match s.trim() {
        "" | "off" => Ok(Listen(None)),
        addr => addr
            .parse()
            .map(|a| Listen(Some(a)))
            .map_err(|e| format!("{addr:?}: {e} (expected HOST:PORT or `off`)")),
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn terminated() -> std::io::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r,
        _ = term.recv() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_flags_take_an_address_or_off() {
        assert_eq!(parse_listen("off"), Ok(Listen(None)));
        assert_eq!(parse_listen(" "), Ok(Listen(None)));
        assert_eq!(
            parse_listen("127.0.0.1:9700"),
            Ok(Listen(Some(SocketAddr::from(([127, 0, 0, 1], 9700)))))
        );
        let err = parse_listen("localhost").unwrap_err();
        assert!(err.contains("expected HOST:PORT or `off`"), "{err}");
    }
}
