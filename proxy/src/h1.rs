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
//! the connection back to its endpoint's idle stack ([`Lease::release`]).
//!
//! A streamed request body is sent as the endpoint reads it, and goes on
//! being sent while the response body is read (an echo, a streaming
//! upload answered early); a connection whose request body was not sent
//! whole is not reused. A client's body that breaks off on the way
//! (malformed framing, cut short) ends the exchange at once, the
//! connection closed: before the answer's head, as a failure of the
//! client's ([`Error::Request`]), after it, as the answer breaking off.
//! One that expects `100 Continue` goes with the
//! expectation and waits for the endpoint's `100` (up to [`EXPECT_WAIT`]);
//! a final answer before it means the body is not sent at all.
//!
//! The side facing the proxy's clients is [`server`], which shares this
//! module's body framing.
//!
//! Message framing follows RFC 9112: the request is re-framed from its body
//! (`Content-Length` when its size is known, chunked otherwise); the
//! response body is delimited by `Transfer-Encoding: chunked`, by
//! `Content-Length`, or by the connection closing, and is empty for `HEAD`,
//! `1xx`, `204` and `304`. A response whose framing is ambiguous or
//! malformed is refused (the try fails as a reset), and a connection whose
//! framing cannot be trusted afterwards is not reused.
//!
//! A request that asks for another protocol (`Upgrade`, e.g. WebSocket)
//! and is answered `101 Switching Protocols` leaves its connection as a
//! [`Tunnel`] in the response's extensions, for the server side to relay
//! bytes through; any other answer to it is an ordinary one.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http_body_util::{Either, Full};
use hyper::body::{Body as _, Frame, SizeHint};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::io::poll_read_buf;
use tracing::debug;

use super::http::{Inbound, Outbound};
use super::pool::{BodyError, Lease, Slot};

/// The largest response head (status line and headers) accepted.
const MAX_HEAD: usize = 64 * 1024;

/// The most header fields a response head may have.
const MAX_HEADERS: usize = 100;

/// The longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4 * 1024;

/// The most bytes of trailer lines accepted after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// How much room a read of a response head asks for: small answers (most
/// of them) fit in one read.
const HEAD_READ: usize = 4 * 1024;

/// How much room a read of a response body asks for: larger bodies are
/// passed on a read at a time.
const BODY_READ: usize = 16 * 1024;

/// A buffered request body up to this size goes out in the same write as
/// the head.
const COALESCE: usize = 16 * 1024;

/// How long a request body that expects `100 Continue` waits for the
/// endpoint's answer before it is sent anyway (RFC 9110 §10.1.1 lets a
/// client stop waiting; curl waits a second too): an endpoint that ignores
/// the expectation waits for the body.
const EXPECT_WAIT: Duration = Duration::from_secs(1);

/// Why an exchange failed: before the answer's head arrived (the try
/// fails) or within its body (the answer breaks off).
#[derive(Debug, thiserror::Error)]
pub(super) enum Error {
    /// The connection failed.
    #[error("upstream connection: {0}")]
    Io(#[from] io::Error),
    /// The endpoint closed the connection before the head's or the body's
    /// end.
    #[error("upstream closed the connection before the end of the answer")]
    Closed,
    /// The endpoint answered something that is not valid HTTP/1.x: a
    /// malformed or ambiguous head, or malformed body framing.
    #[error("invalid upstream answer: {0}")]
    Invalid(&'static str),
    /// The client's request body broke off while it was being sent (its
    /// framing was malformed, or it was cut short): the exchange is given
    /// up at once, and the connection closed. Not the endpoint's failure.
    #[error("request body: {0}")]
    Request(BodyError),
}

/// An endpoint's connection switched to the protocol a client asked for
/// (`101 Switching Protocols`), handed from the client side to the server
/// side in the response's extensions (which must be `Clone`, hence the
/// shared slot; it is taken once). It stays counted against its service's
/// connection limit while the tunnel is open.
#[derive(Clone)]
pub(super) struct Tunnel(Arc<Mutex<Option<Conn>>>);

impl Tunnel {
    /// The connection and the bytes the endpoint sent after its answer's
    /// head; `None` once taken.
    pub(super) fn take(&self) -> Option<(TcpStream, Bytes, Slot)> {
        let conn = self.0.lock().ok()?.take()?;
        Some((conn.io, conn.buf.freeze(), conn._slot))
    }
}

/// An open connection to an endpoint, counted against its service's
/// connection limit until dropped.
pub(super) struct Conn {
    io: TcpStream,
    /// Bytes read and not yet used; empty between exchanges.
    buf: BytesMut,
    _slot: Slot,
}

impl Conn {
    /// A connection over `io`, counted by `slot`.
    pub(super) fn new(io: TcpStream, slot: Slot) -> Conn {
        Conn {
            io,
            buf: BytesMut::new(),
            _slot: slot,
        }
    }

    /// Whether an idle connection can take a request: the endpoint has
    /// neither closed it nor sent anything unasked. Costs no system call
    /// unless the socket has become readable.
    pub(super) fn is_open(&self) -> bool {
        let mut probe = [0u8; 1];
        matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Sends `req` and reads the response head. The response's body reads
    /// the rest and hands the connection to `lease` when it may be reused.
    pub(super) async fn send(
        mut self,
        req: Request<Outbound>,
        lease: Lease,
    ) -> Result<Response<Body>, Error> {
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
        encode_head(&parts, length, expect, out);
        if buffered.len() <= COALESCE {
            out.extend_from_slice(&buffered);
        }
        drop(parts);
        self.io.write_all(&self.buf).await?;
        // The answer takes a buffer when it arrives.
        self.buf = BytesMut::new();
        if buffered.len() > COALESCE {
            self.io.write_all(&buffered).await?;
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
                    return Poll::Ready(Err(Error::Request(error)));
                }
                let mut continued = false;
                let head = poll_head(
                    &mut self.io,
                    &mut self.buf,
                    head_request,
                    upgrade,
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
        let Head {
            mut response,
            framing,
            keep_alive,
        } = head;
        if response.status() == StatusCode::SWITCHING_PROTOCOLS {
            // The connection is the tunnel's now; it never goes back to
            // the pool, and the answer has no body.
            let tunnel = Tunnel(Arc::new(Mutex::new(Some(self))));
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

/// Whether a request expects `100 Continue` before its body.
fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// Writes the request line and headers, framed for a body of `length`
/// bytes (`None`: unknown, sent chunked), with `Expect: 100-continue` when
/// `expect`.
fn encode_head(
    parts: &hyper::http::request::Parts,
    length: Option<u64>,
    expect: bool,
    out: &mut BytesMut,
) {
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.extend_from_slice(b" ");
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    out.extend_from_slice(target.as_bytes());
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        // Framing is this hop's (below), and so is `Expect` (below: a
        // body already read is sent with the head, and the client has had
        // its `100`). `Connection` is written below, as one field.
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    // The options of this hop (a protocol switch the client asked for),
    // with `te` when `TE` is sent, as RFC 9110 §10.1.4 asks.
    let mut listed = false;
    for value in &parts.headers.get_all(header::CONNECTION) {
        out.extend_from_slice(if listed { b", " } else { b"connection: " });
        out.extend_from_slice(value.as_bytes());
        listed = true;
    }
    if parts.headers.contains_key(header::TE) && !connection_has(&parts.headers, "te") {
        out.extend_from_slice(if listed { b", te" } else { b"connection: te" });
        listed = true;
    }
    if listed {
        out.extend_from_slice(b"\r\n");
    }
    if expect {
        out.extend_from_slice(b"expect: 100-continue\r\n");
    }
    match length {
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        // An empty body is announced only where one is expected, or
        // where the client announced it.
        Some(0)
            if !parts.headers.contains_key(header::CONTENT_LENGTH)
                && matches!(
                    parts.method,
                    Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
                ) => {}
        Some(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// A streamed request body on its way to the endpoint.
struct Upload {
    body: Inbound,
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
    Client(BodyError),
    /// The connection to the endpoint failed.
    Upstream(io::Error),
}

impl Upload {
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
                                self.out
                                    .push_back(Bytes::from(format!("{:x}\r\n", data.len())));
                                self.out.push_back(data);
                                self.out.push_back(Bytes::from_static(b"\r\n"));
                            }
                            Some(left) => {
                                *left = left.checked_sub(data.len() as u64).ok_or_else(|| {
                                    Unsent::Client("request body longer than its length".into())
                                })?;
                                self.out.push_back(data);
                            }
                        }
                    }
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(Unsent::Client(e))),
                Poll::Ready(None) => {
                    match self.left {
                        None => self.out.push_back(Bytes::from_static(b"0\r\n\r\n")),
                        Some(_) => {
                            return Poll::Ready(Err(Unsent::Client(
                                "request body shorter than its length".into(),
                            )));
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
fn advance(
    upload: &mut Option<Box<Upload>>,
    reusable: &mut bool,
    io: &mut TcpStream,
    cx: &mut Context<'_>,
) -> Option<BodyError> {
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

/// A parsed response head.
struct Head {
    response: Response<()>,
    framing: Framing,
    /// Whether the endpoint lets the connection be reused.
    keep_alive: bool,
}

/// Reads the response head into `buf` (skipping interim `1xx` answers,
/// and setting `continued` on a `100 Continue`) and leaves the bytes after
/// it there.
fn poll_head(
    io: &mut TcpStream,
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
    continued: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<Head, Error>> {
    loop {
        if !buf.is_empty()
            && let Some(head) = parse_head(buf, head_request, upgrade)?
        {
            match head {
                Parsed::Interim(status) => {
                    *continued |= status == StatusCode::CONTINUE;
                    continue;
                }
                Parsed::Final(head) => return Poll::Ready(Ok(head)),
            }
        }
        if buf.len() >= MAX_HEAD {
            return Poll::Ready(Err(Error::Invalid("response head too large")));
        }
        if buf.capacity() == buf.len() {
            // Memory is taken for bytes that have arrived, not for an
            // answer that is awaited.
            if buf.is_empty() {
                ready!(io.poll_read_ready(cx))?;
            }
            buf.reserve(HEAD_READ);
        }
        match poll_read_buf(Pin::new(&mut *io), cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e.into())),
            Poll::Ready(Ok(0)) => return Poll::Ready(Err(Error::Closed)),
            Poll::Ready(Ok(_)) => {}
        }
    }
}

/// What [`parse_head`] found.
enum Parsed {
    /// An interim (`1xx`) answer, consumed.
    Interim(StatusCode),
    /// The final answer's head, consumed.
    Final(Head),
}

/// Parses a complete response head at the start of `buf`, or `None` when
/// more bytes are needed. A `101` is a final answer when the request asked
/// to `upgrade`, and invalid otherwise.
fn parse_head(
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
) -> Result<Option<Parsed>, Error> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Error::Invalid("too many header fields"));
        }
        Err(_) => return Err(Error::Invalid("malformed head")),
    };
    let code = parsed.code.ok_or(Error::Invalid("no status"))?;
    let status = StatusCode::from_u16(code).map_err(|_| Error::Invalid("status"))?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    if switched && !upgrade {
        return Err(Error::Invalid("unrequested protocol switch"));
    }
    if status.is_informational() && !switched {
        buf.advance(len);
        return Ok(Some(Parsed::Interim(status)));
    }
    // The values are slices of the head, which is kept as one buffer:
    // where each name and value lies in it is noted on the stack first.
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let count = parsed.headers.len();
    let base = buf.as_ptr() as usize;
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let name = h.name.as_ptr() as usize - base;
        let value = h.value.as_ptr() as usize - base;
        *span = (name, name + h.name.len(), value, value + h.value.len());
    }
    let head = buf.split_to(len).freeze();
    let mut headers = HeaderMap::with_capacity(count);
    for &(name_start, name_end, value_start, value_end) in &spans[..count] {
        let name = HeaderName::from_bytes(&head[name_start..name_end])
            .map_err(|_| Error::Invalid("header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| Error::Invalid("header value"))?;
        headers.append(name, value);
    }

    let mut keep_alive = connection_allows_reuse(&headers, version);
    let framing = if switched {
        // What follows the head is the other protocol's.
        keep_alive = false;
        Framing::Length(0)
    } else if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        // With both, Transfer-Encoding wins and the connection is not
        // reused (RFC 9112 §6.3).
        if headers.contains_key(header::CONTENT_LENGTH) {
            keep_alive = false;
        }
        let last = headers
            .get_all(header::TRANSFER_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .rfind(|c| !c.is_empty());
        match last {
            Some(c) if c.eq_ignore_ascii_case("chunked") => Framing::Chunked(Chunked::Size),
            _ => {
                keep_alive = false;
                Framing::Close
            }
        }
    } else if let Some(len) = content_length(&headers)? {
        Framing::Length(len)
    } else {
        keep_alive = false;
        Framing::Close
    };
    // This hop's framing is not the next one's.
    headers.remove(header::TRANSFER_ENCODING);
    if matches!(framing, Framing::Chunked(_) | Framing::Close) {
        headers.remove(header::CONTENT_LENGTH);
    }
    let mut response = Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Parsed::Final(Head {
        response,
        framing,
        keep_alive,
    })))
}

/// The body length `Content-Length` gives: every value must be the same
/// number.
fn content_length(headers: &HeaderMap) -> Result<Option<u64>, Error> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value
            .to_str()
            .map_err(|_| Error::Invalid("content-length"))?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Error::Invalid("content-length"));
            }
            let n: u64 = part.parse().map_err(|_| Error::Invalid("content-length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Error::Invalid("conflicting content-length"));
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Whether the response's `Connection` header and version let the
/// connection be reused.
fn connection_allows_reuse(headers: &HeaderMap, version: Version) -> bool {
    let has = |token: &str| connection_has(headers, token);
    if version == Version::HTTP_11 {
        !has("close")
    } else {
        has("keep-alive") && !has("close")
    }
}

/// Whether a `Connection` header lists `token`.
fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// How the response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At the last chunk, in this state.
    Chunked(Chunked),
    /// When the endpoint closes the connection.
    Close,
}

impl Framing {
    /// Whether the body has been read to its end.
    fn ended(self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }
}

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

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Chunked {
    /// Before a chunk-size line.
    Size,
    /// Inside a chunk, with this many bytes left.
    Data(u64),
    /// Before the CRLF that ends a chunk.
    DataEnd,
    /// Among the trailer lines after the last chunk, this many bytes of
    /// them read.
    Trailers(usize),
    /// Past the end.
    Done,
}

/// One step of decoding a body out of the buffer.
#[derive(Debug, PartialEq, Eq)]
enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The buffer holds no more of the body yet.
    More,
}

/// Takes the next piece of the body from `buf`, in `framing`.
fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
    match framing {
        Framing::Length(0) => Ok(Decoded::End),
        Framing::Length(left) => {
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            let n = usize::try_from(*left).unwrap_or(usize::MAX).min(buf.len());
            *left -= n as u64;
            Ok(Decoded::Data(buf.split_to(n).freeze()))
        }
        Framing::Close => {
            if buf.is_empty() {
                return Ok(Decoded::More);
            }
            Ok(Decoded::Data(buf.split().freeze()))
        }
        Framing::Chunked(state) => loop {
            match *state {
                Chunked::Done => return Ok(Decoded::End),
                Chunked::Size => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::More);
                    };
                    let size = chunk_size(&line)?;
                    *state = if size == 0 {
                        Chunked::Trailers(0)
                    } else {
                        Chunked::Data(size)
                    };
                }
                Chunked::Data(left) => {
                    if buf.is_empty() {
                        return Ok(Decoded::More);
                    }
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(buf.len());
                    *state = match left - n as u64 {
                        0 => Chunked::DataEnd,
                        rest => Chunked::Data(rest),
                    };
                    return Ok(Decoded::Data(buf.split_to(n).freeze()));
                }
                Chunked::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(Decoded::More);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err("chunk end");
                    }
                    buf.advance(2);
                    *state = Chunked::Size;
                }
                Chunked::Trailers(seen) => {
                    let Some(line) = take_line(buf)? else {
                        return Ok(Decoded::More);
                    };
                    // Trailer fields are not forwarded, but must be field
                    // lines; an empty line ends the body.
                    if line.is_empty() {
                        *state = Chunked::Done;
                        continue;
                    }
                    let seen = seen + line.len() + 2;
                    if seen > MAX_TRAILERS {
                        return Err("trailers too large");
                    }
                    if !is_field_line(&line) {
                        return Err("trailer");
                    }
                    *state = Chunked::Trailers(seen);
                }
            }
        },
    }
}

/// The size a chunk-size line gives (RFC 9112 §7.1): hex digits, then
/// optionally extensions, which are not interpreted but must hold no
/// control characters.
fn chunk_size(line: &[u8]) -> Result<u64, &'static str> {
    let digits = line.iter().take_while(|b| b.is_ascii_hexdigit()).count();
    if digits == 0 {
        return Err("chunk size");
    }
    let (hex, rest) = line.split_at(digits);
    // Leading zeros say nothing; more than 15 digits left could overflow.
    let zeros = hex
        .iter()
        .take_while(|&&b| b == b'0')
        .count()
        .min(digits - 1);
    let hex = &hex[zeros..];
    if hex.len() > 15 {
        return Err("chunk size");
    }
    // Spaces or tabs may follow the size (as senders in the wild write
    // them), then only extensions.
    let blank = rest
        .iter()
        .take_while(|&&b| b == b' ' || b == b'\t')
        .count();
    let extensions = &rest[blank..];
    let controls = |b: &u8| b.is_ascii_control() && *b != b'\t';
    if !(extensions.is_empty() || extensions.starts_with(b";") && !extensions.iter().any(controls))
    {
        return Err("chunk size");
    }
    let hex = std::str::from_utf8(hex).map_err(|_| "chunk size")?;
    u64::from_str_radix(hex, 16).map_err(|_| "chunk size")
}

/// Whether `line` is a header field line: a token, a colon, and a value
/// without control characters.
fn is_field_line(line: &[u8]) -> bool {
    let Some(colon) = line.iter().position(|&b| b == b':') else {
        return false;
    };
    let (name, value) = (&line[..colon], &line[colon + 1..]);
    let token = |b: &u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(b);
    !name.is_empty()
        && name.iter().all(token)
        && !value.iter().any(|&b| b.is_ascii_control() && b != b'\t')
}

/// Takes one CRLF-terminated line (without the CRLF) from `buf`; a bare CR
/// or LF within it is malformed.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(at) if at == 0 || buf[at - 1] != b'\r' || buf[..at - 1].contains(&b'\r') => {
            Err("bare CR or LF in a chunk line")
        }
        Some(at) => {
            let line = buf.split_to(at - 1);
            buf.advance(2);
            Ok(Some(line))
        }
        None if buf.len() > MAX_LINE => Err("chunk line too long"),
        None => Ok(None),
    }
}

/// A response body read from its connection as it is polled. The
/// connection goes back to its endpoint's idle stack once the body has
/// been read to its end, if the endpoint allows reuse; dropped earlier,
/// it is closed.
pub(super) struct Body {
    framing: Framing,
    /// `None` once the body has ended.
    conn: Option<Conn>,
    lease: Option<Lease>,
    /// The rest of a streamed request body, sent as this body is read.
    upload: Option<Box<Upload>>,
    reusable: bool,
}

impl Body {
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

impl hyper::body::Body for Body {
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
                return Poll::Ready(Some(Err(Error::Request(error))));
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
                    return Poll::Ready(Some(Err(Error::Invalid(why))));
                }
            }
            match poll_read_body(&mut conn.io, &mut conn.buf, cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(Error::Io(e))));
                }
                Poll::Ready(Ok(0)) => {
                    this.conn = None;
                    return Poll::Ready(match this.framing {
                        Framing::Close => None,
                        _ => Some(Err(Error::Closed)),
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

pub(super) mod server;

#[cfg(test)]
mod tests;
