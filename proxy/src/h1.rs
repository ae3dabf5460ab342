//! HTTP/1.1, the proxy's own codec on httparse, one home per concern:
//!
//! - [`head`]: request and response heads, parsed strictly from the bytes
//!   read so far and written by one `encode_head`, with the rules of the
//!   `Connection` and `Expect` fields;
//! - [`framing`]: how a body ends (chunked, length, close), decided once for
//!   each direction, and the one decoder that takes a body out of bytes
//!   (complete / need more / invalid, no I/O);
//! - [`client`]: one exchange at a time on a pooled connection to an
//!   endpoint;
//! - [`server`]: a client's connection, requests read one at a time, with
//!   keep-alive and pipelining;
//! - [`tunnel`]: a connection switched to another protocol, relayed both
//!   ways.
//!
//! Parsing and decoding never touch a socket: the client and the server
//! read bytes and hand them over, so the codec can be fuzzed and tested on
//! any split of the bytes. A framing error anywhere ends the exchange at
//! once: 400 (or the connection closed once a response has begun), and the
//! upstream connection discarded.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio_util::io::poll_read_buf;

pub(crate) mod client;
pub(crate) mod framing;
pub(crate) mod head;
pub(crate) mod server;
pub(crate) mod tunnel;

/// The most header fields a head may have.
const MAX_HEADERS: usize = 100;

/// How much room a read of a head asks for: small heads (most of them) fit
/// in one read.
const HEAD_READ: usize = 4 * 1024;

/// How much room a read of a body asks for: larger bodies are passed on a
/// read at a time.
const BODY_READ: usize = 16 * 1024;

/// Reads more of a body into `buf`, making room for [`BODY_READ`] bytes
/// when little is left.
fn poll_read_body(
    io: &mut (impl tokio::io::AsyncRead + Unpin),
    buf: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    if buf.capacity() - buf.len() < BODY_READ / 4 {
        buf.reserve(BODY_READ);
    }
    poll_read_buf(Pin::new(io), cx, buf)
}
