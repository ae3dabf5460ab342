//! Message bodies as the proxy passes them on: over HTTP/1.x (read by the
//! proxy's own codec) or HTTP/2 (hyper's), one type for either.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming, SizeHint};

use crate::error::BodyError;
use crate::h1::server;

/// A message body over HTTP/1.x (read by the proxy's own code) or HTTP/2
/// (hyper's): an endpoint's response ([`crate::pool::Upstream`]) or a
/// client's request ([`Inbound`]).
pub(crate) enum Versioned<B> {
    /// Read from its connection as it is polled.
    Http1(B),
    /// Received by the HTTP/2 connection's task.
    Http2(Incoming),
}

/// A request body: an HTTP/1.x client's or an HTTP/2 stream's.
pub(crate) type Inbound = Versioned<server::Body>;

/// A request body sent upstream: the client's, streamed, or a buffered copy
/// (for requests that may be retried).
pub(crate) type Outbound = Either<Inbound, Full<Bytes>>;

impl<B> hyper::body::Body for Versioned<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BodyError>,
{
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        match self.get_mut() {
            Versioned::Http1(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
            Versioned::Http2(b) => std::pin::Pin::new(b).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Versioned::Http1(b) => b.is_end_stream(),
            Versioned::Http2(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Versioned::Http1(b) => b.size_hint(),
            Versioned::Http2(b) => b.size_hint(),
        }
    }
}
