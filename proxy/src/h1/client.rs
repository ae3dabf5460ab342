//! The proxy's own HTTP/1.1 client side: one request at a time on a pooled
//! keep-alive connection to an endpoint, driven by the task that serves
//! the client's request.
//!
//! A general-purpose client runs each connection as a task of its own and
//! reaches it through a channel, so every request crosses two tasks and the
//! connection keeps a queue and buffers while idle. Here the request's task
//! writes the request and reads the response head itself, and the response
//! body ([`Body`]) reads the rest from the socket as the client's side asks
//! for it; when it has read the last byte of a reusable response it gives
//! the connection back to its endpoint's idle stack ([`Release`]).
//!
//! A streamed request body is sent as the endpoint reads it, and goes on
//! being sent while the response body is read (an echo, a streaming
//! upload answered early); a connection whose request body was not sent
//! whole is not reused. A client's body that breaks off on the way
//! (malformed framing, cut short) ends the exchange at once, the
//! connection closed: before the answer's head, as a failure of the
//! client's (an error of [`Origin::Downstream`]), after it, as the answer
//! breaking off.
//! One that expects `100 Continue` goes with the
//! expectation and waits for the endpoint's `100` (up to [`EXPECT_WAIT`]);
//! a final answer before it means the body is not sent at all.
//!
//! Message framing follows RFC 9112 ([`super::framing`]): the request is
//! re-framed from its body (`Content-Length` when its size is known,
//! chunked otherwise); the response body is delimited by
//! `Transfer-Encoding: chunked`, by `Content-Length`, or by the connection
//! closing, and is empty for `HEAD`, `1xx`, `204` and `304`. A response
//! whose framing is ambiguous or malformed is refused (the try fails as a
//! reset), and a connection whose framing cannot be trusted afterwards is
//! not reused.
//!
//! A request that asks for another protocol (`Upgrade`, e.g. WebSocket)
//! and is answered `101 Switching Protocols` leaves its connection as a
//! [`Tunnel`] in the response's extensions, for the server side to relay
//! bytes through; any other answer to it is an ordinary one.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::header;
use hyper::{Method, Request, Response, StatusCode};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;
use tracing::debug;

use super::framing::{self, CHUNK_END, Decoded, Framing, LAST_CHUNK, decode};
use super::head::{self, Hop, ResponseHead, Start, connection_has, encode_head, expects_continue};
use super::tunnel::Tunnel;
use super::{HEAD_READ, poll_read_body};
use crate::error::{Error, Kind, Origin, Retry};
use crate::limit::Slot;

/// A buffered request body up to this size goes out in the same write as
/// the head.
const COALESCE: usize = 16 * 1024;

/// How long a request body that expects `100 Continue` waits for the
/// endpoint's answer before it is sent anyway (RFC 9110 §10.1.1 lets a
/// client stop waiting; curl waits a second too): an endpoint that ignores
/// the expectation waits for the body.
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// Where a connection goes back for reuse once an exchange on it is over
/// (its endpoint's idle connections, in the pool).
pub(crate) trait Release {
    /// Takes `conn` back for another exchange.
    fn release(self, conn: Conn);
}

/// An open connection to an endpoint, counted against its service's
/// connection limit until dropped.
pub(crate) struct Conn {
    io: TcpStream,
    /// Bytes read and not yet used; empty between exchanges.
    buf: BytesMut,
    /// It served an exchange before: a failure before any byte of the next
    /// answer is most likely the endpoint closing it while idle
    /// ([`Retry::ReusedOnly`]).
    reused: bool,
    _slot: Slot,
}

impl Conn {
    /// A connection over `io`, counted by `slot`.
    pub(crate) fn new(io: TcpStream, slot: Slot) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            reused: false,
            _slot: slot,
        }
    }

    /// Whether an idle connection can take a request: the endpoint has
    /// neither closed it nor sent anything unasked. Costs no system call
    /// unless the socket has become readable.
    pub(crate) fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `req` and reads the response head. The response's body reads
    /// the rest and hands the connection to `lease` when it may be reused.
    pub(crate) async fn send<B, L>(
        mut self,
        req: Request<Either<B, Full<Bytes>>>,
        lease: L,
    ) -> Result<Response<Body<B, L>>, Error>
    where
        B: hyper::body::Body<Data = Bytes, Error = Error> + Unpin,
        L: Release,
    {
        let (parts, body) = req.into_parts();
        let head_request = parts.method == Method::HEAD;
        // The proxy forwards `Upgrade` only for a client that asked for it
        // (see `http::forward`).
        let upgrade = parts.headers.contains_key(header::UPGRADE);
        // A buffered body (or none) goes out with the head; a streamed one
        // is sent while the response is awaited.
        let (buffered, stream) = match body {
            Either::Right(full) => (take(full), None),
            Either::Left(incoming) if incoming.is_end_stream() => (Bytes::new(), None),
            Either::Left(incoming) => (Bytes::new(), Some(incoming)),
        };
        let length = match &stream {
            None => Some(buffered.len() as u64),
            Some(incoming) => incoming.size_hint().exact(),
        };
        // A streamed body that expects `100 Continue` waits for the
        // endpoint's: the client's side answers `100` when the body is
        // first read, so the client hears the endpoint's go-ahead (or its
        // early refusal) rather than the proxy's.
        let expect = stream.is_some() && expects_continue(&parts.headers);
        // The head is made in the connection's buffer, which then takes
        // the answer: one allocation for both.
        let out = &mut self.buf;
        out.reserve(HEAD_READ.max(512 + buffered.len().min(COALESCE)));
        let delimit = framing::outbound_request(
            &parts.method,
            parts.headers.contains_key(header::CONTENT_LENGTH),
            length,
        );
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let hop = Hop {
            delimit,
            expect,
            date: false,
        };
        // The options of this hop (a protocol switch the client asked for),
        // with `te` when `TE` is sent, as RFC 9110 §10.1.4 asks.
        let te = parts.headers.contains_key(header::TE) && !connection_has(&parts.headers, "te");
        let connection = (parts.headers.get_all(header::CONNECTION).iter())
            .map(|v| v.as_bytes())
            .chain(te.then_some(&b"te"[..]));
        encode_head(
            out,
            Start::Request(&parts.method, target),
            &parts.headers,
            hop,
            connection,
        );
        if buffered.len() <= COALESCE {
            out.extend_from_slice(&buffered);
        }
        drop(parts);
        // Until a byte of the answer arrives, a failure on a reused
        // connection is most likely the endpoint having closed it idle.
        let early = if self.reused {
            Retry::ReusedOnly
        } else {
            Retry::Idempotent
        };
        let failed = |e| Error::io(e, Origin::Upstream, early);
        self.io.write_all(&self.buf).await.map_err(failed)?;
        // The answer takes a buffer when it arrives.
        self.buf = BytesMut::new();
        if buffered.len() > COALESCE {
            self.io.write_all(&buffered).await.map_err(failed)?;
        }

        // A streamed body is sent as the endpoint reads it, while its
        // answer is awaited and, if the answer comes first (an echo, an
        // early error), while the answer's body is read.
        let mut upload = stream.map(|body| {
            Box::new(Upload {
                body,
                left: length,
                out: VecDeque::new(),
                finished: false,
            })
        });
        let mut reusable = true;
        // Until the endpoint's `100` (or the wait is over), the body is
        // held back.
        let mut held = expect.then(|| Box::pin(tokio::time::sleep(EXPECT_WAIT)));
        let head = std::future::poll_fn(|cx| {
            loop {
                if held
                    .as_mut()
                    .is_some_and(|t| t.as_mut().poll(cx).is_ready())
                {
                    held = None;
                }
                if held.is_none()
                    && let Some(error) = advance(&mut upload, &mut reusable, &mut self.io, cx)
                {
                    return Poll::Ready(Err(error.into_downstream()));
                }
                let mut continued = false;
                let head = poll_head(
                    &mut self.io,
                    &mut self.buf,
                    (head_request, upgrade, early),
                    &mut continued,
                    cx,
                );
                if continued && held.is_some() {
                    held = None;
                    // The body starts now (and with the answer, if that
                    // came too).
                    if head.is_pending() {
                        continue;
                    }
                }
                return head;
            }
        })
        .await?;
        if held.is_some() && upload.is_some() {
            // A final answer before the `100`: the endpoint does not want
            // the body (RFC 9110 §10.1.1), which is not sent, and the
            // connection, whose framing is now unknown to the endpoint, is
            // not reused.
            upload = None;
            reusable = false;
        }
        let ResponseHead {
            mut response,
            framing,
            keep_alive,
        } = head;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection is the tunnel's now; it never goes back to
            // the pool, and the answer has no body.
            let tunnel = Tunnel::new(self.io, self.buf, self._slot);
            response.extensions_mut().insert(tunnel);
            let body = Body {
                framing: Framing::Length(0),
                conn: None,
                lease: None,
                upload: None,
                reusable: false,
            };
            let (parts, ()) = response.into_parts();
            return Ok(Response::from_parts(parts, body));
        }
        let mut body = Body {
            framing,
            conn: Some(self),
            lease: Some(lease),
            upload,
            reusable: reusable && keep_alive,
        };
        body.release_if_done();
        let (parts, ()) = response.into_parts();
        Ok(Response::from_parts(parts, body))
    }
}

/// The bytes of a buffered body (which has them at once).
fn take(mut full: Full<Bytes>) -> Bytes {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    match Pin::new(&mut full).poll_frame(&mut cx) {
        Poll::Ready(Some(Ok(frame))) => frame.into_data().unwrap_or_default(),
        _ => Bytes::new(),
    }
}

/// A streamed request body on its way to the endpoint.
struct Upload<B> {
    body: B,
    /// The bytes still to come of a body of known size, sent as is;
    /// `None` for one of unknown size, sent chunked.
    left: Option<u64>,
    /// Framed pieces not yet written.
    out: VecDeque<Bytes>,
    /// The body has ended; what is left to write is in `out`.
    finished: bool,
}

/// Why a streamed request body was not sent whole.
enum Unsent {
    /// The client's body broke off.
    Client(Error),
    /// The connection to the endpoint failed.
    Upstream(io::Error),
}

impl<B> Upload<B>
where
    B: hyper::body::Body<Data = Bytes, Error = Error> + Unpin,
{
    /// Writes what can be written now: ready when all of it is sent, or
    /// when sending failed (the client's body or the connection broke).
    fn poll_send(&mut self, io: &mut TcpStream, cx: &mut Context<'_>) -> Poll<Result<(), Unsent>> {
        loop {
            while let Some(front) = self.out.front_mut() {
                match Pin::new(&mut *io).poll_write(cx, front) {
                    Poll::Ready(Ok(0)) => {
                        return Poll::Ready(Err(Unsent::Upstream(io::ErrorKind::WriteZero.into())));
                    }
                    Poll::Ready(Ok(n)) => {
                        front.advance(n);
                        if front.is_empty() {
                            self.out.pop_front();
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(Unsent::Upstream(e))),
                    Poll::Pending => return Poll::Pending,
                }
            }
            // A body of known size is sent once its last byte is, whether
            // or not the client's side has seen its end yet (the endpoint
            // may answer, and the connection be reused, before it has).
            if self.finished || self.left == Some(0) {
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.body).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    // Trailers are not forwarded.
                    if let Ok(data) = frame.into_data()
                        && !data.is_empty()
                    {
                        match &mut self.left {
                            None => {
                                let mut size = BytesMut::with_capacity(18);
                                framing::encode_chunk_size(data.len(), &mut size);
                                self.out.push_back(size.freeze());
                                self.out.push_back(data);
                                self.out.push_back(Bytes::from_static(CHUNK_END));
                            }
                            Some(left) => {
                                *left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                                    Unsent::Client(Error::downstream(Kind::Invalid(
                                        "request body longer than its length",
                                    )))
                                })?;
                                self.out.push_back(data);
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Unsent::Client(e))),
                Poll::Ready(None) => {
                    match self.left {
                        None => self.out.push_back(Bytes::from_static(LAST_CHUNK)),
                        Some(_) => {
                            return Poll::Ready(Err(Unsent::Client(Error::downstream(
                                Kind::Invalid("request body shorter than its length"),
                            ))));
                        }
                    }
                    self.finished = true;
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

/// Moves `upload` on, if there is one: gone once sent; gone, and the
/// connection not to be reused, once failed. The client's body breaking
/// off is returned: the exchange ends with it.
fn advance<B>(
    upload: &mut Option<Box<Upload<B>>>,
    reusable: &mut bool,
    io: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Option<Error>
where
    B: hyper::body::Body<Data = Bytes, Error = Error> + Unpin,
{
    let u = upload.as_mut()?;
    let sent = match u.poll_send(io, cx) {
        Poll::Ready(sent) => sent,
        Poll::Pending => return None,
    };
    *upload = None;
    match sent {
        Ok(()) => None,
        Err(Unsent::Upstream(error)) => {
            // The endpoint may have answered without reading it all, and
            // closed: its answer is still read.
            debug!(%error, "request body not sent whole");
            *reusable = false;
            None
        }
        Err(Unsent::Client(error)) => {
            *reusable = false;
            Some(error)
        }
    }
}

/// Reads the response head into `buf` (skipping interim `1xx` answers,
/// and setting `continued` on a `100 Continue`) and leaves the bytes after
/// it there.
///
/// `asked` is whether the request was `HEAD`, whether it asked to switch
/// protocols, and how safe a retry is while no byte has come back.
fn poll_head(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    asked: (bool, bool, Retry),
    continued: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<ResponseHead, Error>> {
    let (head_request, upgrade, early) = asked;
    let invalid = |why| Error::upstream(Kind::Invalid(why), Retry::Idempotent);
    loop {
        // Once a byte has come back, the endpoint has answered: the
        // connection was not closed idle.
        let retry = if buf.is_empty() {
            early
        } else {
            Retry::Idempotent
        };
        if !buf.is_empty()
            && let Some(head) = head::parse_response(buf, head_request, upgrade).map_err(invalid)?
        {
            match head {
                head::Response::Interim(status) => {
                    *continued |= status == StatusCode::CONTINUE;
                    continue;
                }
                head::Response::Final(head) => return Poll::Ready(Ok(head)),
            }
        }
        if buf.len() >= head::MAX_RESPONSE_HEAD {
            return Poll::Ready(Err(invalid("response head too large")));
        }
        if buf.capacity() == buf.len() {
            // Memory is taken for bytes that have arrived, not for an
            // answer that is awaited.
            if buf.is_empty() {
                ready!(io.poll_read_ready(cx))
                    .map_err(|e| Error::io(e, Origin::Upstream, retry))?;
            }
            buf.reserve(HEAD_READ);
        }
        match poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(Error::io(e, Origin::Upstream, retry))),
            Poll::Ready(Ok(0)) => {
                return Poll::Ready(Err(Error::upstream(Kind::Closed, retry)));
            }
            Poll::Ready(Ok(_)) => {}
        }
    }
}

/// A response body read from its connection as it is polled. The
/// connection goes back to its endpoint's idle stack once the body has
/// been read to its end, if the endpoint allows reuse; dropped earlier,
/// it is closed.
pub(crate) struct Body<B, L> {
    framing: Framing,
    /// `None` once the body has ended.
    conn: Option<Conn>,
    lease: Option<L>,
    /// The rest of a streamed request body, sent as this body is read.
    upload: Option<Box<Upload<B>>>,
    reusable: bool,
}

impl<B, L: Release> Body<B, L> {
    /// At the body's end, gives the connection back (or closes it).
    fn finish(&mut self) {
        let conn = self.conn.take();
        // Not while a request body is still on its way: the endpoint
        // answered without reading all of it.
        if let (Some(mut conn), Some(lease)) = (conn, self.lease.take())
            && self.reusable
            && self.upload.is_none()
            && conn.buf.is_empty()
        {
            // An idle connection holds no buffer (the body's last bytes
            // may still share it until they are written out).
            conn.buf = BytesMut::new();
            conn.reused = true;
            lease.release(conn);
        }
    }

    /// Finishes at once a body that is empty.
    fn release_if_done(&mut self) {
        if self.framing == Framing::Length(0) {
            self.finish();
        }
    }
}

impl<B, L> hyper::body::Body for Body<B, L>
where
    B: hyper::body::Body<Data = Bytes, Error = Error> + Unpin,
    L: Release + Unpin,
{
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            if let Some(error) = advance(&mut this.upload, &mut this.reusable, &mut conn.io, cx) {
                // The answer has begun: it breaks off too, so that the
                // client does not take it for a whole one.
                this.conn = None;
                return Poll::Ready(Some(Err(error.into_downstream())));
            }
            match decode(&mut this.framing, &mut conn.buf) {
                Ok(Decoded::Data(data)) => {
                    if this.framing.ended() {
                        this.finish();
                    }
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Ok(Decoded::End) => {
                    this.finish();
                    return Poll::Ready(None);
                }
                Ok(Decoded::More) => {}
                Err(why) => {
                    this.conn = None;
                    let error = Error::upstream(Kind::Invalid(why), Retry::Never);
                    return Poll::Ready(Some(Err(error)));
                }
            }
            match poll_read_body(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::io(e, Origin::Upstream, Retry::Never))));
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(match this.framing {
                        Framing::Close => None,
                        _ => Some(Err(Error::upstream(Kind::Closed, Retry::Never))),
                    });
                }
                Poll::Ready(Ok(_)) => {}
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.framing.ended()
    }

    fn size_hint(&self) -> SizeHint {
        match self.framing {
            Framing::Length(n) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests;
