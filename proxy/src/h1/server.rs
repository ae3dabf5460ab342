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
//! strictly (see [`super::decode`]). The request goes upstream re-framed
//! by the client side ([`super`]), so no framing of the client's ever
//! reaches an endpoint.
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
//! endpoint's connection ([`Tunnel`]), the connection stops being HTTP:
//! bytes are relayed both ways, half-closes passed on, until both sides
//! have closed.

use std::future::Future;
use std::io::{self, IoSlice};
use std::pin::{Pin, pin};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Uri, Version};
use tokio::io::{AsyncWriteExt, Interest};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::time::Sleep;
use tokio_util::io::poll_read_buf;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use super::{
    Chunked, Decoded, Framing, HEAD_READ, MAX_HEADERS, Tunnel, connection_allows_reuse,
    connection_has, content_length, decode, poll_read_body,
};

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

/// In the extensions of a request that asks to switch protocols: the
/// handler may pass the ask on and answer `101` with a [`Tunnel`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpgradeRequested;

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

        let Head {
            request,
            keep_alive,
            bodiless,
            upgrade,
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

/// A request head and how to treat its connection.
struct Head {
    request: Request<()>,
    /// Whether the client lets the connection be reused.
    keep_alive: bool,
    /// Whether the response has no body (`HEAD`).
    bodiless: bool,
    /// Whether the request asks to switch protocols.
    upgrade: bool,
}

/// What [`Reader::poll_head`] found.
// Returned once per request and never stored: boxing the head would cost
// an allocation for nothing.
#[allow(clippy::large_enum_variant)]
enum Parsed {
    Request(Head),
    Http2,
}

/// A refused request: the status and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Refusal(StatusCode, &'static str);

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
    /// `None` when more bytes are needed.
    fn parse(&mut self, limits: Limits) -> Result<Option<Parsed>, Refusal> {
        // httparse knows HTTP/1.0 and 1.1 only: a request line it refuses
        // for its version (rarely) is read here, before a verdict.
        match self.parse_known(limits) {
            Err(UNSUPPORTED_VERSION) => match request_line(&self.buf) {
                Line::Partial => Ok(None),
                Line::Malformed => Err(bad("malformed request line")),
                Line::Unsupported => Err(UNSUPPORTED_VERSION),
                // A later HTTP/1 minor version is served as the highest
                // this server speaks, HTTP/1.1 (RFC 9112 §2.3).
                Line::LaterMinor(at) => {
                    self.buf[at] = b'1';
                    self.parse_known(limits)
                }
            },
            parsed => parsed,
        }
    }

    /// [`Reader::parse`] for HTTP/1.0 and 1.1; any other version, or what
    /// httparse takes for one, is [`UNSUPPORTED_VERSION`].
    fn parse_known(&mut self, limits: Limits) -> Result<Option<Parsed>, Refusal> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut parsed = httparse::Request::new(&mut fields);
        let len = match parsed.parse(&self.buf) {
            Ok(httparse::Status::Complete(len)) if len > limits.max_head => {
                return Err(TOO_LARGE);
            }
            Ok(httparse::Status::Complete(len)) => len,
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(httparse::Error::TooManyHeaders) => {
                return Err(Refusal(
                    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                    "too many header fields",
                ));
            }
            Err(httparse::Error::Version) => return Err(UNSUPPORTED_VERSION),
            Err(_) => return Err(bad("malformed request head")),
        };
        let method = parsed.method.unwrap_or_default();
        let method = Method::from_bytes(method.as_bytes()).map_err(|_| bad("method"))?;
        let version = match parsed.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        // Where the target, names and values lie in the head, noted on
        // the stack: they become slices of it, without copies.
        let base = self.buf.as_ptr() as usize;
        let offset = |s: &[u8]| s.as_ptr() as usize - base;
        let path = parsed.path.unwrap_or_default().as_bytes();
        let target = (offset(path), offset(path) + path.len());
        let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
        let count = parsed.headers.len();
        for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
            let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
            *span = (name, name + h.name.len(), value, value + h.value.len());
        }
        let head = self.buf.split_to(len).freeze();
        if self.buf.is_empty() {
            // Nothing else buffered: the next read takes a new buffer when
            // bytes arrive (this one lives on in the head's slices).
            self.buf = BytesMut::new();
        }
        // Room for the headers the proxy adds (`x-forwarded-for`,
        // `x-request-id`) without growing the map.
        let mut headers = HeaderMap::with_capacity(count + 2);
        for &(name_start, name_end, value_start, value_end) in &spans[..count] {
            let name = HeaderName::from_bytes(&head[name_start..name_end])
                .map_err(|_| bad("header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
                .map_err(|_| bad("header value"))?;
            headers.append(name, value);
        }
        let uri = Uri::from_maybe_shared(head.slice(target.0..target.1))
            .map_err(|_| bad("request target"))?;
        if method == Method::CONNECT {
            return Err(Refusal(
                StatusCode::NOT_IMPLEMENTED,
                "CONNECT is not supported",
            ));
        }

        // RFC 9112 §3.2: exactly one Host in HTTP/1.1; an absolute target's
        // authority replaces it.
        let hosts = headers.get_all(header::HOST).iter().count();
        if hosts > 1 {
            return Err(bad("more than one host header"));
        }
        if let Some(authority) = uri.authority() {
            let host = HeaderValue::from_str(authority.as_str()).map_err(|_| bad("host"))?;
            headers.insert(header::HOST, host);
        } else if hosts == 0 && version == Version::HTTP_11 {
            return Err(bad("missing host header"));
        }

        // RFC 9112 §6: how the body ends.
        self.framing = if headers.contains_key(header::TRANSFER_ENCODING) {
            if version == Version::HTTP_10 {
                return Err(bad("transfer-encoding in an HTTP/1.0 request"));
            }
            if headers.contains_key(header::CONTENT_LENGTH) {
                return Err(bad("both transfer-encoding and content-length"));
            }
            let mut codings = headers
                .get_all(header::TRANSFER_ENCODING)
                .iter()
                .flat_map(|v| v.as_bytes().split(|&b| b == b','))
                .map(<[u8]>::trim_ascii)
                .filter(|c| !c.is_empty());
            match (codings.next(), codings.next()) {
                (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => {}
                _ => {
                    return Err(Refusal(
                        StatusCode::NOT_IMPLEMENTED,
                        "transfer coding not supported",
                    ));
                }
            }
            // The framing is this hop's; the next one gets its own.
            headers.remove(header::TRANSFER_ENCODING);
            Framing::Chunked(Chunked::Size)
        } else {
            match content_length(&headers) {
                Ok(length) => Framing::Length(length.unwrap_or(0)),
                Err(_) => return Err(bad("content-length")),
            }
        };
        self.broken = false;
        self.expect = None;
        if let Some(expect) = headers.get(header::EXPECT) {
            if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
                return Err(Refusal(
                    StatusCode::EXPECTATION_FAILED,
                    "expectation not supported",
                ));
            }
            if version == Version::HTTP_11 && self.framing != Framing::Length(0) {
                self.expect = Some(CONTINUE);
            }
        }

        let keep_alive = connection_allows_reuse(&headers, version);
        let bodiless = method == Method::HEAD;
        // RFC 9110 §7.8. With a body, the body would have to be relayed
        // before the switch: such a request is served as an ordinary one.
        let upgrade = version == Version::HTTP_11
            && self.framing == Framing::Length(0)
            && headers.contains_key(header::UPGRADE)
            && connection_has(&headers, "upgrade");
        let mut request = Request::new(());
        if upgrade {
            request.extensions_mut().insert(UpgradeRequested);
        }
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        Ok(Some(Parsed::Request(Head {
            request,
            keep_alive,
            bodiless,
            upgrade,
        })))
    }

    /// Whether the current request's body has been read to its end.
    fn body_read(&self) -> bool {
        !self.broken && self.framing.ended()
    }

    /// Reads the next piece of the current request's body.
    fn poll_body(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Bytes, Error>>> {
        if self.broken {
            return Poll::Ready(Some(Err(Error::Closed)));
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
                    return Poll::Ready(Some(Err(Error::Invalid(why))));
                }
            }
            match poll_read_body(&mut self.io, &mut self.buf, cx) {
                Poll::Pending => return self.wait(cx),
                Poll::Ready(Ok(0)) => {
                    self.broken = true;
                    return Poll::Ready(Some(Err(Error::Closed)));
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
            return Poll::Ready(Some(Err(Error::Idle)));
        }
        Poll::Pending
    }

    /// Marks the connection broken by `error`.
    fn fail(&mut self, error: io::Error) -> Error {
        self.broken = true;
        Error::Io(error)
    }
}

/// What [`request_line`] makes of a request line whose version httparse
/// refused.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// The line has not all arrived.
    Partial,
    /// Not `method SP target SP HTTP/d.d` (a space inside the target, a
    /// malformed version): 400.
    Malformed,
    /// A well-formed version of another major version: 505.
    Unsupported,
    /// HTTP/1.2 to 1.9: the minor version's digit is at this index.
    LaterMinor(usize),
}

/// Reads the request line at the start of `buf` for its version (RFC 9112
/// §3: exactly three parts, single spaces apart; the version
/// `HTTP/DIGIT.DIGIT`).
fn request_line(buf: &[u8]) -> Line {
    let Some(end) = buf.iter().position(|&b| b == b'\n') else {
        return Line::Partial;
    };
    let line = buf[..end].strip_suffix(b"\r").unwrap_or(&buf[..end]);
    if line.iter().filter(|&&b| b == b' ').count() != 2 {
        return Line::Malformed;
    }
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or_default();
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() =>
        {
            if *major == b'1' && *minor > b'1' {
                Line::LaterMinor(line.len() - 1)
            } else {
                Line::Unsupported
            }
        }
        _ => Line::Malformed,
    }
}

/// Answered for a request of another HTTP major version.
const UNSUPPORTED_VERSION: Refusal = Refusal(
    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
    "HTTP version not supported",
);

/// Answered for a head over the limit.
const TOO_LARGE: Refusal = Refusal(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "request head too large",
);

/// The client closed the connection within a head.
const CLOSED: Refusal = Refusal(StatusCode::BAD_REQUEST, "connection closed within the head");

fn bad(why: &'static str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, why)
}

/// Why a request body could not be read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Error {
    /// The connection failed.
    #[error("client connection: {0}")]
    Io(#[from] io::Error),
    /// The client closed the connection before the body's end, or the
    /// request the body belonged to is over.
    #[error("client closed the connection before the end of the request body")]
    Closed,
    /// The body's chunked framing is malformed.
    #[error("invalid request body: {0}")]
    Invalid(&'static str),
    /// No byte of the body came within the idle timeout.
    #[error("client sent nothing of the request body within the idle timeout")]
    Idle,
}

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
            None => Poll::Ready(Some(Err(Error::Closed))),
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

/// How a response body is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Delimited {
    /// No body (`HEAD`, `1xx`, `204`, `304`).
    Empty,
    /// By `Content-Length`, with this many bytes left.
    Length(u64),
    /// Chunked.
    Chunked,
    /// By closing the connection (an HTTP/1.0 client, size unknown).
    Close,
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
    let status = parts.status;
    let mut delimited = if bodiless
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Delimited::Empty
    } else if let Some(n) = body.size_hint().exact() {
        Delimited::Length(n)
    } else if version == Version::HTTP_11 {
        Delimited::Chunked
    } else {
        Delimited::Close
    };
    let close = close || delimited == Delimited::Close;
    encode_head(&parts, delimited, version, close, out);

    let mut body = pin!(body);
    if delimited == Delimited::Empty {
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
            Delimited::Length(left) => {
                *left = left
                    .checked_sub(data.len() as u64)
                    .ok_or_else(|| io::Error::other("response body longer than its length"))?;
            }
            Delimited::Chunked => {
                use std::fmt::Write as _;
                let _ = write!(out, "{:x}\r\n", data.len());
            }
            Delimited::Close | Delimited::Empty => {}
        }
        if data.len() <= COPY_MAX {
            out.extend_from_slice(&data);
        } else {
            send_both(write, out, &mut data, idle).await?;
        }
        if delimited == Delimited::Chunked {
            out.extend_from_slice(b"\r\n");
        }
    }
    match delimited {
        Delimited::Chunked => out.extend_from_slice(b"0\r\n\r\n"),
        Delimited::Length(0) => {}
        Delimited::Length(_) => {
            send(write, out, idle).await?;
            return Err(io::Error::other("response body shorter than its length"));
        }
        Delimited::Close | Delimited::Empty => {}
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

/// Writes the status line and headers into `out`, framed as `delimited`.
fn encode_head(
    parts: &hyper::http::response::Parts,
    delimited: Delimited,
    version: Version,
    close: bool,
    out: &mut BytesMut,
) {
    use std::fmt::Write as _;
    out.reserve(256);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(
        parts
            .status
            .canonical_reason()
            .unwrap_or_default()
            .as_bytes(),
    );
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        let framing = name == header::TRANSFER_ENCODING
            || (name == header::CONTENT_LENGTH && delimited != Delimited::Empty);
        if framing || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match delimited {
        Delimited::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Delimited::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Delimited::Close | Delimited::Empty => {}
    }
    if !parts.headers.contains_key(header::DATE) {
        // RFC 9110 §6.6.1: a response forwarded without one gets one.
        out.extend_from_slice(b"date: ");
        now(out);
        out.extend_from_slice(b"\r\n");
    }
    if parts.status == StatusCode::SWITCHING_PROTOCOLS {
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if close {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends the current time as an HTTP date, formatted once a second per
/// thread.
fn now(out: &mut BytesMut) {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static LAST: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    LAST.with_borrow_mut(|(at, text)| {
        if *at != second {
            *at = second;
            *text = httpdate::fmt_http_date(now);
        }
        out.extend_from_slice(text.as_bytes());
    });
}

/// Switches the connection to the protocol the endpoint agreed to: writes
/// the `101` answer (with what the endpoint sent after its own), then
/// relays bytes both ways between the client and the endpoint until both
/// have closed; a half-close on either side is passed on. The tunnel
/// counts against its service's connection limit (`slot`) while open.
async fn switch<B>(
    shared: Arc<Mutex<Reader>>,
    write: OwnedWriteHalf,
    mut out: BytesMut,
    response: Response<B>,
    (mut server, early, _slot): (TcpStream, Bytes, crate::pool::Slot),
    idle: Duration,
) {
    let (parts, _) = response.into_parts();
    encode_head(&parts, Delimited::Empty, Version::HTTP_11, false, &mut out);
    out.extend_from_slice(&early);
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
    let Ok(mut client) = read.reunite(write) else {
        return;
    };
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
    encode_head(
        &parts,
        Delimited::Length(text.len() as u64),
        Version::HTTP_11,
        true,
        out,
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
