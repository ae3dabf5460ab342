//! The proxy's own HTTP/1.1 server side: reads a client's requests off its
//! connection one at a time, hands each to the proxy's handler and writes
//! the response back, with keep-alive and pipelining.
//!
//! A general-purpose server keeps a read buffer (up to 16 KiB) and a write
//! buffer (8 KiB) per connection for the connection's whole life. Here a
//! connection holds a read buffer only while bytes wait in it: it is taken
//! when the socket turns readable and let go once the head is parsed and
//! nothing else is buffered, so an idle keep-alive connection, or one whose
//! request is out at an endpoint, costs no buffer at all. The response head
//! and a small body go out in one write.
//!
//! The request is parsed strictly (RFC 9112), and what cannot be read one
//! way only is refused and the connection closed: `Transfer-Encoding` with
//! `Content-Length`, conflicting `Content-Length`s, a transfer coding other
//! than `chunked` alone (`501`), `Transfer-Encoding` in HTTP/1.0, an
//! HTTP/1.1 request without exactly one `Host`; chunk lines are read
//! strictly (see [`super::framing`]). The request goes upstream re-framed
//! by the client side ([`super::client`]), so no framing of the client's
//! ever reaches an endpoint.
//!
//! Slow clients are bounded: a head must arrive within the head timeout, a
//! request body may not pause, nor a client stop taking a response, for
//! longer than the idle timeout. A response that breaks off mid-body
//! resets the connection rather than closing it, so that no client (an
//! HTTP/1.0 one reads to the close) takes it for a whole one.
//!
//! The request body is read from the socket as the handler asks for it
//! ([`Body`]), answering `Expect: 100-continue` on the first read: the
//! client side reads it once the endpoint has answered its own `100`, so
//! the client hears the endpoint's go-ahead, or only its early final
//! answer (a `413` before any byte of the body was sent). A
//! response may stream while its request body is still arriving (an echo);
//! a connection whose request body was not read to its end is closed after
//! the response, since what follows on it is not a request.
//!
//! A connection that opens with the HTTP/2 preface is handed back
//! ([`Served::Http2`]) with the bytes read so far, for the HTTP/2 server.
//!
//! An HTTP/1.1 request without a body that asks to switch protocols
//! (`Connection: upgrade` and `Upgrade`, as WebSocket does) is marked
//! ([`UpgradeRequested`]); when the handler answers `101` with the
//! endpoint's connection ([`Tunnel`]), the connection stops being HTTP
//! ([`super::tunnel`]).

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderValue};
use hyper::{Request, Response, StatusCode, Version};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::framing::{self, CHUNK_END, Decoded, Delimit, Framing, LAST_CHUNK, decode};
pub(crate) use super::head::UpgradeRequested;
use super::head::{self, Hop, Refusal, RequestHead, Start, TOO_LARGE, encode_head};
use super::tunnel::{self, Tunnel};
use super::{HEAD_READ, poll_read_body};
use crate::error::{Error, Kind, Origin, Retry};

/// What the HTTP/2 connection preface starts with.
const HTTP2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Body pieces up to this size are copied next to the response head (or
/// the previous piece) and written with it; larger ones are written from
/// where they are.
const COPY_MAX: usize = 4 * 1024;

/// How long a closed connection goes on reading (and dropping) what the
/// client still sends, and how much, so that the client reads the last
/// response before the kernel resets the connection for unread bytes.
const LINGER: Duration = Duration::from_secs(2);
const LINGER_BYTES: usize = 256 * 1024;

thread_local! {
    /// Where a thread's connections read new request heads (see
    /// [`Reader::poll_head`]).
    static SCRATCH: std::cell::RefCell<Box<[u8]>> =
        std::cell::RefCell::new(vec![0; HEAD_READ].into_boxed_slice());
}

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// The largest request head (request line and headers); a larger one
    /// is answered `431`.
    pub max_head: usize,
    /// How long a client may take to send a request head, counted from
    /// when the connection starts waiting for it; an idle keep-alive
    /// connection is closed after it.
    pub head_timeout: Duration,
    /// How long a request body may go without a byte arriving, and a
    /// response without the client taking a byte of it, before the
    /// connection is given up.
    pub idle_timeout: Duration,
}

/// How a connection ended.
pub(crate) enum Served {
    /// Served over HTTP/1.x to its end.
    Done,
    /// It opened with the HTTP/2 preface: the connection and the bytes
    /// read from it so far, for the HTTP/2 server.
    Http2(TcpStream, Bytes),
}

/// Serves HTTP/1.x requests on `io` with `handler` until the client
/// closes, an error, or `stop`: then idle connections close at once and
/// one with a request in progress after its response. `refused` is told
/// of each request refused before it reached the handler, and of each
/// whose body broke off (malformed framing, cut short, too slow) while the
/// handler read it, whatever the handler answered.
pub(crate) async fn serve<H, F, B>(
    io: TcpStream,
    limits: Limits,
    stop: &CancellationToken,
    refused: impl Fn(),
    mut handler: H,
) -> Served
where
    H: FnMut(Request<Body>) -> F,
    F: Future<Output = Response<B>>,
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let (read, mut write) = io.into_split();
    let shared = Arc::new(Mutex::new(Reader {
        io: read,
        buf: BytesMut::new(),
        framing: Framing::Length(0),
        request: 0,
        broken: false,
        expect: None,
        waker: None,
        idle: None,
        idle_timeout: limits.idle_timeout,
    }));
    let mut out = BytesMut::new();
    let mut first = true;
    loop {
        let head = tokio::select! {
            // The head first: one already buffered (pipelined) never arms
            // the timer.
            biased;
            head = std::future::poll_fn(|cx| lock(&shared).poll_head(limits, first, cx)) => head,
            () = tokio::time::sleep(limits.head_timeout) => {
                let started = !lock(&shared).buf.is_empty();
                if started {
                    refused();
                    let why = Refusal(StatusCode::REQUEST_TIMEOUT, "request head timed out");
                    refuse(why, &shared, write, &mut out, stop).await;
                }
                return Served::Done;
            }
            // Only an idle connection is closed at once; a request on its
            // way is served (and the connection closed after it).
            () = stop.cancelled(), if lock(&shared).buf.is_empty() => return Served::Done,
        };
        first = false;
        let head = match head {
            Ok(Some(Parsed::Request(head))) => head,
            Ok(Some(Parsed::Http2)) => {
                let read = std::mem::take(&mut lock(&shared).buf).freeze();
                // No request body exists yet: the reader is this loop's
                // alone.
                let Ok(reader) = Arc::try_unwrap(shared) else {
                    return Served::Done;
                };
                let reader = reader.into_inner().unwrap_or_else(PoisonError::into_inner);
                return match reader.io.reunite(write) {
                    Ok(io) => Served::Http2(io, read),
                    Err(_) => Served::Done,
                };
            }
            Ok(None) => return Served::Done,
            Err(why) => {
                refused();
                refuse(why, &shared, write, &mut out, stop).await;
                return Served::Done;
            }
        };

        let RequestHead {
            request,
            keep_alive,
            bodiless,
            upgrade,
            ..
        } = head;
        let version = request.version();
        let id = lock(&shared).request;
        let request = request.map(|()| Body {
            shared: shared.clone(),
            request: id,
        });
        let response = handler(request).await;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            let tunnel = response.extensions().get::<Tunnel>().and_then(Tunnel::take);
            match tunnel {
                // No body of the request's is held elsewhere (it had none).
                Some(upstream) if upgrade && Arc::strong_count(&shared) == 1 => {
                    switch(shared, write, out, response, upstream, limits.idle_timeout).await;
                }
                _ => {
                    let why = Refusal(StatusCode::BAD_GATEWAY, "protocol switch failed");
                    refuse(why, &shared, write, &mut out, stop).await;
                }
            }
            return Served::Done;
        }
        let (close, owed) = {
            let mut reader = lock(&shared);
            // Too late for the interim answer once the final one is on
            // its way, except the rest of one begun.
            let owed = reader
                .expect
                .take()
                .filter(|rest| rest.len() < CONTINUE.len());
            // Said in the response when already known: a body that broke,
            // or that nobody will read (the handler let go of it).
            let unread = !reader.body_read() && Arc::strong_count(&shared) == 1;
            let close = !keep_alive || stop.is_cancelled() || reader.broken || unread;
            (close, owed.unwrap_or_default())
        };
        out.extend_from_slice(owed);
        let how = Framed {
            bodiless,
            version,
            close,
            idle: limits.idle_timeout,
        };
        let written = respond(&mut write, &mut out, response, how).await;
        // Anything left of this request's body is no longer its; a body
        // still held elsewhere (an HTTP/2 upstream's sending task) is
        // woken to find that out and let go of the connection.
        let (body_read, broken) = {
            let mut reader = lock(&shared);
            reader.request += 1;
            reader.idle = None;
            if let Some(waker) = reader.waker.take() {
                waker.wake();
            }
            (reader.body_read(), reader.broken)
        };
        if broken {
            refused();
        }
        if out.capacity() > COPY_MAX {
            out = BytesMut::new();
        }
        match written {
            Ok(true) if body_read && !stop.is_cancelled() => {}
            Ok(_) => {
                linger(&shared, write, stop).await;
                return Served::Done;
            }
            Err(error) => {
                // Reset, not closed: a client reading to the close (HTTP/1.0)
                // must not take a cut response for a whole one.
                debug!(%error, "response not written whole");
                let _ = lock(&shared).io.as_ref().set_zero_linger();
                write.forget();
                return Served::Done;
            }
        }
    }
}

/// Locks the reader; a panic elsewhere while it was locked leaves it
/// usable (the connection then ends anyway).
fn lock(shared: &Mutex<Reader>) -> MutexGuard<'_, Reader> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The reading side of a connection, shared by the connection's loop
/// (heads) and the current request's [`Body`].
struct Reader {
    io: OwnedReadHalf,
    /// Bytes read and not yet used; no allocation while empty.
    buf: BytesMut,
    /// How the current request's body ends.
    framing: Framing,
    /// The number of the current request, so that a body kept past its
    /// request reads nothing of the next one's.
    request: u64,
    /// The body's framing was malformed or the client went away: the
    /// connection cannot serve another request.
    broken: bool,
    /// What is left to write of a `100 Continue`, owed before the first
    /// read of the body.
    expect: Option<&'static [u8]>,
    /// The task that last found the body waiting, woken when the request
    /// ends (it may be another task than the connection's).
    waker: Option<Waker>,
    /// Since when the body has been waiting for bytes (armed at the first
    /// wait, dropped when bytes come).
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
}

/// What [`Reader::poll_head`] found.
// Returned once per request and never stored: boxing the head would cost
// an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(RequestHead),
    Http2,
}

impl Reader {
    /// Reads the next request head: `None` when the client closed the
    /// connection between requests.
    fn poll_head(
        &mut self,
        limits: Limits,
        first: bool,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Parsed>, Refusal>> {
        // Whether the bytes last read could have completed a head: a head
        // sent a byte at a time is not parsed again from its start for
        // every byte.
        let mut fresh = true;
        loop {
            if !self.buf.is_empty() {
                let seen = self.buf.len().min(HTTP2_PREFACE.len());
                let http2 = first && HTTP2_PREFACE[..seen] == self.buf[..seen];
                if http2 && seen == HTTP2_PREFACE.len() {
                    return Poll::Ready(Ok(Some(Parsed::Http2)));
                }
                // (Part of the preface: wait for the rest.)
                if !http2
                    && fresh
                    && let Some(parsed) = self.parse(limits)?
                {
                    return Poll::Ready(Ok(Some(parsed)));
                }
            }
            if self.buf.len() >= limits.max_head {
                return Poll::Ready(Err(TOO_LARGE));
            }
            if self.buf.is_empty() {
                // A head usually arrives in one piece: read it into the
                // thread's scratch buffer and keep a copy of its size, so
                // that a waiting connection holds no buffer and a request
                // in flight only its own bytes.
                if ready!(self.io.as_ref().poll_read_ready(cx)).is_err() {
                    return Poll::Ready(Ok(None));
                }
                let read = SCRATCH.with_borrow_mut(|scratch| {
                    let socket = self.io.as_ref();
                    let mut got = None;
                    // A read that does not fill the scratch buffer emptied
                    // the socket: its readiness is cleared (by answering
                    // `WouldBlock` to `try_io`), so that the next wait goes
                    // to the poller instead of to a read that would find
                    // nothing, as tokio's own `poll_read` does. An event
                    // that came in the meantime keeps it set.
                    let cleared = socket.try_io(Interest::READABLE, || {
                        let n = socket.try_read(&mut scratch[..])?;
                        got = Some(n);
                        if n > 0 && n < scratch.len() {
                            return Err(io::ErrorKind::WouldBlock.into());
                        }
                        Ok(n)
                    });
                    let n = match (got, cleared) {
                        (Some(n), _) | (None, Ok(n)) => n,
                        (None, Err(e)) => return Err(e),
                    };
                    self.buf = BytesMut::from(&scratch[..n]);
                    Ok::<_, io::Error>(n)
                });
                match read {
                    Ok(0) => return Poll::Ready(Ok(None)),
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => {
                        return Poll::Ready(Ok(None));
                    }
                    // Parsed, or readiness polled again (and the task woken
                    // when there is more).
                    _ => {
                        fresh = true;
                        continue;
                    }
                }
            }
            if self.buf.capacity() == self.buf.len() {
                self.buf.reserve(HEAD_READ);
            }
            match ready!(poll_read_buf(Pin::new(&mut self.io), cx, &mut self.buf)) {
                Ok(0) | Err(_) => return Poll::Ready(Err(CLOSED)),
                Ok(n) => fresh = self.buf[self.buf.len() - n..].contains(&b'\n'),
            }
        }
    }

    /// Parses a complete request head at the start of the buffer, or
    /// `None` when more bytes are needed; the body that follows is read
    /// as its head says.
    fn parse(&mut self, limits: Limits) -> Result<Option<Parsed>, Refusal> {
        let Some(head) = head::parse_request(&mut self.buf, limits.max_head)? else {
            return Ok(None);
        };
        self.framing = head.framing;
        self.broken = false;
        self.expect = head.expect_continue.then_some(CONTINUE);
        Ok(Some(Parsed::Request(head)))
    }

    /// Whether the current request's body has been read to its end.
    fn body_read(&self) -> bool {
        !self.broken && self.framing.ended()
    }

    /// Reads the next piece of the current request's body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if self.broken {
            return Poll::Ready(Some(Err(Error::downstream(Kind::Closed))));
        }
        while let Some(rest) = self.expect {
            // Nothing has been written on the connection yet, so this
            // rarely waits.
            match self.io.as_ref().try_write(rest) {
                Ok(n) => self.expect = Some(&rest[n..]).filter(|r| !r.is_empty()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if let Poll::Ready(ready) = self.io.as_ref().poll_write_ready(cx) {
                        ready.map_err(|e| self.fail(e))?;
                        continue;
                    }
                    return self.wait(cx);
                }
                Err(e) => return Poll::Ready(Some(Err(self.fail(e)))),
            }
        }
        loop {
            match decode(&mut self.framing, &mut self.buf) {
                Ok(Decoded::Data(data)) => return Poll::Ready(Some(Ok(data))),
                Ok(Decoded::End) => return Poll::Ready(None),
                Ok(Decoded::More) => {}
                Err(why) => {
                    self.broken = true;
                    return Poll::Ready(Some(Err(Error::downstream(Kind::Invalid(why)))));
                }
            }
            match poll_read_body(&mut self.io, &mut self.buf, cx) {
                Poll::Pending => return self.wait(cx),
                Poll::Ready(Ok(0)) => {
                    self.broken = true;
                    return Poll::Ready(Some(Err(Error::downstream(Kind::Closed))));
                }
                Poll::Ready(Ok(_)) => self.idle = None,
                Poll::Ready(Err(e)) => return Poll::Ready(Some(Err(self.fail(e)))),
            }
        }
    }

    /// The body waits for the client: noted for the end of the request,
    /// and bounded by the idle timeout.
    fn wait(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if !self.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            self.waker = Some(cx.waker().clone());
        }
        let timeout = self.idle_timeout;
        let idle = self
            .idle
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if idle.as_mut().poll(cx).is_ready() {
            self.idle = None;
            self.broken = true;
            return Poll::Ready(Some(Err(Error::downstream(Kind::Timeout))));
        }
        Poll::Pending
    }

    /// Marks the connection broken by `error`.
    fn fail(&mut self, error: io::Error) -> Error {
        self.broken = true;
        Error::io(error, Origin::Downstream, Retry::Never)
    }
}

/// The client closed the connection within a head.
const CLOSED: Refusal = Refusal(StatusCode::BAD_REQUEST, "connection closed within the head");

/// A request body, read from the client's connection as it is polled.
pub(crate) struct Body {
    shared: Arc<Mutex<Reader>>,
    /// The request it belongs to.
    request: u64,
}

impl Body {
    /// The reader, while the body's request is the current one.
    fn reader(&self) -> Option<MutexGuard<'_, Reader>> {
        Some(lock(&self.shared)).filter(|r| r.request == self.request)
    }

    /// A handle that tells whether this body broke off, for the handler to
    /// keep while the body itself goes elsewhere.
    pub(crate) fn watch(&self) -> Watch {
        Watch(Body {
            shared: self.shared.clone(),
            request: self.request,
        })
    }
}

/// Tells whether a request body broke off: its framing was malformed, the
/// client went away or stopped sending ([`Body::watch`]).
pub(crate) struct Watch(Body);

impl Watch {
    /// Whether the body broke off.
    pub(crate) fn broke(&self) -> bool {
        self.0.reader().is_some_and(|r| r.broken)
    }
}

impl hyper::body::Body for Body {
    type Data = Bytes;
    type Error = Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Error>>> {
        match self.reader() {
            Some(mut reader) => reader
                .poll_body(cx)
                .map(|piece| piece.map(|r| r.map(Frame::data))),
            None => Poll::Ready(Some(Err(Error::downstream(Kind::Closed)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        // A body kept past its request did not end: it was cut.
        self.reader().is_some_and(|r| r.body_read())
    }

    fn size_hint(&self) -> SizeHint {
        match self.reader().map(|r| r.framing) {
            Some(Framing::Length(n)) => SizeHint::with_exact(n),
            _ => SizeHint::default(),
        }
    }
}

/// How a response is to be written.
struct Framed {
    /// It has no body (the request was `HEAD`).
    bodiless: bool,
    /// The request's version.
    version: Version,
    /// The connection closes after it.
    close: bool,
    /// How long the client may go without taking a byte of it.
    idle: Duration,
}

/// Writes `response`, head and body, after what `out` already holds;
/// `Ok(true)` when the connection may serve another request.
async fn respond<B>(
    write: &mut OwnedWriteHalf,
    out: &mut BytesMut,
    response: Response<B>,
    how: Framed,
) -> io::Result<bool>
where
    B: hyper::body::Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    let Framed {
        bodiless,
        version,
        close,
        idle,
    } = how;
    let (parts, body) = response.into_parts();
    let mut delimited =
        framing::outbound_response(bodiless, parts.status, body.size_hint().exact(), version);
    let close = close || delimited == Delimit::Close;
    encode_response(out, &parts, delimited, version, close);

    let mut body = pin!(body);
    if delimited == Delimit::Bodiless {
        send(write, out, idle).await?;
        out.clear();
        return Ok(!close);
    }
    loop {
        // Pieces that are ready go out together; the buffer is written
        // when the body has nothing more ready.
        let frame = std::future::poll_fn(|cx| match body.as_mut().poll_frame(cx) {
            Poll::Pending if !out.is_empty() => Poll::Ready(Step::Flush),
            Poll::Pending => Poll::Pending,
            Poll::Ready(frame) => Poll::Ready(Step::Frame(frame)),
        })
        .await;
        let mut data = match frame {
            Step::Flush => {
                send(write, out, idle).await?;
                out.clear();
                continue;
            }
            Step::Frame(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => data,
                // Trailers are not forwarded.
                Err(_) => continue,
            },
            Step::Frame(Some(Err(error))) => {
                // The client must not take a cut body for a whole one:
                // the connection closes without the body's end.
                send(write, out, idle).await?;
                return Err(io::Error::other(format!("response body: {error}")));
            }
            Step::Frame(None) => break,
        };
        if data.is_empty() {
            continue;
        }
        match &mut delimited {
            Delimit::Length(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| io::Error::other("response body longer than its length"))?;
            }
            Delimit::Chunked => framing::encode_chunk_size(data.len(), out),
            Delimit::Close | Delimit::Bodiless => {}
        }
        if data.len() <= COPY_MAX {
            out.extend_from_slice(&data);
        } else {
            send_both(write, out, &mut data, idle).await?;
        }
        if delimited == Delimit::Chunked {
            out.extend_from_slice(CHUNK_END);
        }
    }
    match delimited {
        Delimit::Chunked => out.extend_from_slice(LAST_CHUNK),
        Delimit::Length(0) => {}
        Delimit::Length(_) => {
            send(write, out, idle).await?;
            return Err(io::Error::other("response body shorter than its length"));
        }
        Delimit::Close | Delimit::Bodiless => {}
    }
    send(write, out, idle).await?;
    out.clear();
    Ok(!close)
}

/// One step of writing a response body.
enum Step<F> {
    /// Write what is buffered: the body has nothing ready.
    Flush,
    /// The body's next frame, or its end.
    Frame(Option<F>),
}

/// Writes `out` and clears it; fails if the client takes nothing for
/// `idle`.
async fn send(write: &OwnedWriteHalf, out: &mut BytesMut, idle: Duration) -> io::Result<()> {
    send_both(write, out, &mut Bytes::new(), idle).await
}

/// Writes `out` then `data`, in as few system calls as the socket takes,
/// and clears `out`; fails if the client takes nothing for `idle`. The
/// socket is tried first: only a client that is behind costs a timer.
async fn send_both(
    write: &OwnedWriteHalf,
    out: &mut BytesMut,
    data: &mut Bytes,
    idle: Duration,
) -> io::Result<()> {
    while !out.is_empty() || !data.is_empty() {
        let written = if data.is_empty() {
            write.try_write(out)
        } else {
            write.try_write_vectored(&[IoSlice::new(out), IoSlice::new(data)])
        };
        match written {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => {
                let from_out = n.min(out.len());
                out.advance(from_out);
                data.advance(n - from_out);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                tokio::time::timeout(idle, write.writable())
                    .await
                    .map_err(|_| io::Error::from(io::ErrorKind::TimedOut))??;
            }
            Err(e) => return Err(e),
        }
    }
    out.clear();
    Ok(())
}

/// Writes a response head into `out`, delimited as `delimited`, saying
/// whether the connection stays open (`close`; HTTP/1.0 clients are told
/// when it does) or switches protocols (`101`).
fn encode_response(
    out: &mut BytesMut,
    parts: &hyper::http::response::Parts,
    delimited: Delimit,
    version: Version,
    close: bool,
) {
    let connection: &[u8] = if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        b"upgrade"
    } else if close {
        b"close"
    } else if version == Version::HTTP_10 {
        b"keep-alive"
    } else {
        b""
    };
    let hop = Hop {
        delimit: delimited,
        expect: false,
        date: true,
    };
    let start = Start::Response(parts.status);
    encode_head(
        out,
        start,
        &parts.headers,
        hop,
        Some(connection).filter(|c| !c.is_empty()),
    );
}

/// Switches the connection to the protocol the endpoint agreed to: writes
/// the `101` answer (with what the endpoint sent after its own), then
/// relays bytes both ways ([`tunnel::relay`]).
async fn switch<B>(
    shared: Arc<Mutex<Reader>>,
    write: OwnedWriteHalf,
    mut out: BytesMut,
    response: Response<B>,
    upstream: tunnel::Upstream,
    idle: Duration,
) {
    let (parts, _) = response.into_parts();
    encode_response(&mut out, &parts, Delimit::Bodiless, Version::HTTP_11, false);
    out.extend_from_slice(&upstream.early);
    if let Err(error) = send(&write, &mut out, idle).await {
        debug!(%error, "protocol switch not written");
        return;
    }
    let Ok(reader) = Arc::try_unwrap(shared) else {
        return;
    };
    let reader = reader.into_inner().unwrap_or_else(PoisonError::into_inner);
    // What the client sent after its request, in the new protocol already.
    let (read, pending) = (reader.io, reader.buf);
    let Ok(client) = read.reunite(write) else {
        return;
    };
    tunnel::relay(client, pending, upstream).await;
}

/// Answers a request that cannot be served with `why` and closes the
/// connection.
async fn refuse(
    why: Refusal,
    shared: &Mutex<Reader>,
    write: OwnedWriteHalf,
    out: &mut BytesMut,
    stop: &CancellationToken,
) {
    let Refusal(status, reason) = why;
    debug!(%status, reason, "request refused");
    let text = format!("switchyard: {reason}\n");
    let mut response = Response::new(());
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    let (parts, ()) = response.into_parts();
    out.clear();
    encode_response(
        out,
        &parts,
        Delimit::Length(text.len() as u64),
        Version::HTTP_11,
        true,
    );
    out.extend_from_slice(text.as_bytes());
    let idle = lock(shared).idle_timeout;
    if send(&write, out, idle).await.is_ok() {
        linger(shared, write, stop).await;
    }
}

/// Closes the connection after its last response: sends the end of the
/// stream, then reads and drops what the client still sends (up to
/// [`LINGER`] and [`LINGER_BYTES`], or until `stop`) so that its unread
/// bytes do not make the kernel reset the connection before the client
/// has read the response.
async fn linger(shared: &Mutex<Reader>, mut write: OwnedWriteHalf, stop: &CancellationToken) {
    if write.shutdown().await.is_err() {
        return;
    }
    let mut dropped = 0;
    let drain = std::future::poll_fn(|cx| {
        let mut reader = lock(shared);
        let reader = &mut *reader;
        loop {
            reader.buf.clear();
            reader.buf.reserve(HEAD_READ);
            match ready!(poll_read_buf(Pin::new(&mut reader.io), cx, &mut reader.buf)) {
                Ok(n) if n > 0 && dropped + n <= LINGER_BYTES => dropped += n,
                _ => return Poll::Ready(()),
            }
        }
    });
    tokio::select! {
        _ = tokio::time::timeout(LINGER, drain) => {}
        () = stop.cancelled() => {}
    }
}

#[cfg(test)]
mod tests;
