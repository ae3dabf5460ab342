//! Tunnels: a connection switched to another protocol (`101 Switching
//! Protocols`, e.g. WebSocket) stops being HTTP. The endpoint's connection
//! is handed from the client side to the server side in the response's
//! extensions ([`Tunnel`]), and the server side relays bytes both ways
//! until both sides have closed ([`relay`]).

use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tracing::debug;

use crate::limit::Slot;

/// An endpoint's connection switched to the protocol a client asked for,
/// in the `101` response's extensions (which must be `Clone`, hence the
/// shared slot; it is taken once). It stays counted against its service's
/// connection limit while the tunnel is open.
#[derive(Clone)]
pub(crate) struct Tunnel(Arc<Mutex<Option<Upstream>>>);

/// The endpoint's side of a tunnel.
pub(crate) struct Upstream {
    /// The connection.
    pub io: TcpStream,
    /// What the endpoint sent after its answer's head.
    pub early: Bytes,
    /// Its place in the service's connection limit.
    pub slot: Slot,
}

impl Tunnel {
    /// A tunnel over `io`, with the bytes read past the `101`'s head.
    pub(crate) fn new(io: TcpStream, early: BytesMut, slot: Slot) -> Tunnel {
        let early = early.freeze();
        Tunnel(Arc::new(Mutex::new(Some(Upstream { io, early, slot }))))
    }

    /// The endpoint's side; `None` once taken.
    pub(crate) fn take(&self) -> Option<Upstream> {
        self.0.lock().ok()?.take()
    }
}

/// Relays bytes both ways between `client` and the endpoint until both
/// have closed; a half-close on either side is passed on. `pending` is what
/// the client sent after its request, in the new protocol already.
pub(crate) async fn relay(mut client: TcpStream, pending: BytesMut, upstream: Upstream) {
    let Upstream {
        io: mut server,
        slot: _slot,
        ..
    } = upstream;
    if !pending.is_empty()
        && let Err(error) = server.write_all(&pending).await
    {
        debug!(%error, "tunnel to the endpoint failed");
        return;
    }
    let _ = server.set_nodelay(true);
    // copy_bidirectional shuts down each write side when its read side
    // reaches end of stream: half-closes pass through.
    if let Err(error) = tokio::io::copy_bidirectional(&mut client, &mut server).await {
        debug!(%error, "tunnel ended with an error");
    }
}
