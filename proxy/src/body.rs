//! Message bodies as the proxy passes them on: over HTTP/1.x (read by the
//! proxy's own codec) or HTTP/2 (hyper's), one type for either.

use bytes::Bytes;
use http_body_util::{Either, Full};
use hyper::body::{Frame, Incoming, SizeHint};

use crate::error::{Error, Origin, Retry};
use crate::h1::{client, server};

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

/// Which side a body comes from, for the errors of its HTTP/2 form.
pub(crate) trait Side {
    /// The side.
    const ORIGIN: Origin;
}

impl Side for server::Body {
    const ORIGIN: Origin = Origin::Downstream;
}

impl<B, L> Side for client::Body<B, L> {
    const ORIGIN: Origin = Origin::Upstream;
}

impl<B> hyper::body::Body for Versioned<B>
where
    B: hyper::body::Body<Data = Bytes, Error = Error> + Side + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.get_mut() {
            Versioned::Http1(b) => std::pin::Pin::new(b).poll_frame(cx),
            // A body that broke off is never retried: the answer has begun.
            Versioned::Http2(b) => std::pin::Pin::new(b)
                .poll_frame(cx)
                .map_err(|e| Error::http2(e, B::ORIGIN, Retry::Never)),
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
