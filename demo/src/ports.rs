//! The demo's fixed ports: the control plane's and the proxy listeners'.
//! Each is checked up front, so a port already taken (a control plane or a
//! demo still running, another local server on 8080) is one clear error
//! naming the flag that changes it, not a warning in the agent's log.

use std::io::ErrorKind;
use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;

/// A port that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Something else listens there.
    #[error("{addr} ({what}) is already in use; {hint}")]
    InUse {
        /// The address.
        addr: SocketAddr,
        /// What the demo wanted it for.
        what: &'static str,
        /// Which flag picks another.
        hint: String,
    },
    /// Any other failure to bind.
    #[error("binding {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// What the demo wanted it for.
        what: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// `port_base + 1` is not a port.
    #[error("--port-base {0}: the demo needs two ports from there, and {0} is the last one")]
    PortBase(u16),
}

/// Binds the control plane's port.
pub async fn control_plane(addr: SocketAddr) -> Result<TcpListener, Error> {
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == ErrorKind::AddrInUse {
            let next = SocketAddr::new(addr.ip(), addr.port().wrapping_add(1).max(1));
            Error::InUse {
                addr,
                what: "the control plane",
                hint: format!(
                    "is a control plane or another demo running? Choose another address with \
                     --listen, e.g. --listen {next}"
                ),
            }
        } else {
            Error::Bind {
                addr,
                what: "the control plane",
                source,
            }
        }
    })
}

/// The ports of the demo's two listeners (round robin, canary) on
/// 127.0.0.1: `base` and `base + 1`, checked free, or any two free ports
/// when `base` is 0.
///
/// The check binds and releases each port; the agent binds them again
/// moments later. Something grabbing one in between shows up as a listener
/// the demo waits for in vain, and the start times out.
pub async fn listeners(base: u16) -> Result<[u16; 2], Error> {
    const WHAT: [&str; 2] = ["the round-robin listener", "the canary listener"];
    if base == 0 {
        // Both held at once, so they differ.
        let first = bind(0, WHAT[0], base).await?;
        let second = bind(0, WHAT[1], base).await?;
        return Ok([port_of(&first, WHAT[0])?, port_of(&second, WHAT[1])?]);
    }
    let next = base.checked_add(1).ok_or(Error::PortBase(base))?;
    bind(base, WHAT[0], base).await?;
    bind(next, WHAT[1], base).await?;
    Ok([base, next])
}

async fn bind(port: u16, what: &'static str, base: u16) -> Result<TcpListener, Error> {
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    TcpListener::bind(addr).await.map_err(|source| {
        if source.kind() == ErrorKind::AddrInUse {
            let other = if base == 18_080 { 28_080 } else { 18_080 };
            Error::InUse {
                addr,
                what,
                hint: format!(
                    "choose other ports with --port-base, e.g. --port-base {other} \
                     (listeners on {other} and {}), or --port-base 0 for any free ports",
                    other + 1
                ),
            }
        } else {
            Error::Bind { addr, what, source }
        }
    })
}

fn port_of(listener: &TcpListener, what: &'static str) -> Result<u16, Error> {
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Bind {
            addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            what,
            source,
        })
}

/// An address of `bound` that a local client can connect to: a wildcard
/// address (`0.0.0.0`, `::`) becomes loopback.
pub fn reachable(bound: SocketAddr) -> SocketAddr {
    match bound {
        SocketAddr::V4(a) if a.ip().is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, a.port()))
        }
        SocketAddr::V6(a) if a.ip().is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, a.port()))
        }
        other => other,
    }
}

#[cfg(test)]
mod tests;
