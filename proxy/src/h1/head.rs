//! HTTP/1.1 heads (RFC 9112 §2–5), parsed and encoded: a client's request
//! head read strictly ([`parse_request`]), an endpoint's response head
//! ([`parse_response`]), both written by the one [`encode_head`], and the
//! rules of the `Connection` and `Expect` fields. Heads are parsed with
//! httparse from the bytes read so far, with no I/O: a complete head, "need
//! more", or a refusal naming what is wrong. How the body after a head ends
//! is [`super::framing`]'s business.

use bytes::{Buf, BytesMut};
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri, Version};

use super::MAX_HEADERS;
use super::framing::{self, Delimit, Framing};

/// The largest response head (status line and headers) accepted.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A refused request: the status to answer and a short reason.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refusal(pub StatusCode, pub &'static str);

/// A refused request's 400.
pub(crate) fn bad(why: &'static str) -> Refusal {
    Refusal(StatusCode::BAD_REQUEST, why)
}

/// Answered for a head over the limit.
pub(crate) const TOO_LARGE: Refusal = Refusal(
    StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
    "request head too large",
);

/// Answered for a request of another HTTP major version.
const UNSUPPORTED_VERSION: Refusal = Refusal(
    StatusCode::HTTP_VERSION_NOT_SUPPORTED,
    "HTTP version not supported",
);

/// In the extensions of a request that asks to switch protocols: the
/// handler may pass the ask on and answer `101` with a
/// [`super::tunnel::Tunnel`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct UpgradeRequested;

/// A client's request head and what it says of its connection and body.
pub(crate) struct RequestHead {
    pub request: Request<()>,
    /// Whether the client lets the connection be reused.
    pub keep_alive: bool,
    /// Whether the response has no body (`HEAD`).
    pub bodiless: bool,
    /// Whether the request asks to switch protocols.
    pub upgrade: bool,
    /// How its body ends.
    pub framing: Framing,
    /// Whether the client waits for `100 Continue` before its body.
    pub expect_continue: bool,
}

/// Parses a complete request head at the start of `buf` (strictly, RFC
/// 9112), taking it out of `buf`, or `None` when more bytes are needed. A
/// head over `max_head` bytes is refused.
pub(crate) fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<RequestHead>, Refusal> {
    // httparse knows HTTP/1.0 and 1.1 only: a request line it refuses
    // for its version (rarely) is read here, before a verdict.
    match parse_known(buf, max_head) {
        Err(UNSUPPORTED_VERSION) => match request_line(buf) {
            Line::Partial => Ok(None),
            Line::Malformed => Err(bad("malformed request line")),
            Line::Unsupported => Err(UNSUPPORTED_VERSION),
            // A later HTTP/1 minor version is served as the highest
            // this server speaks, HTTP/1.1 (RFC 9112 §2.3).
            Line::LaterMinor(at) => {
                buf[at] = b'1';
                parse_known(buf, max_head)
            }
        },
        parsed => parsed,
    }
}

/// [`parse_request`] for HTTP/1.0 and 1.1; any other version, or what
/// httparse takes for one, is [`UNSUPPORTED_VERSION`].
fn parse_known(buf: &mut BytesMut, max_head: usize) -> Result<Option<RequestHead>, Refusal> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) if len > max_head => {
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
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| s.as_ptr() as usize - base;
    let path = parsed.path.unwrap_or_default().as_bytes();
    let target = (offset(path), offset(path) + path.len());
    let mut spans = [(0usize, 0usize, 0usize, 0usize); MAX_HEADERS];
    let count = parsed.headers.len();
    for (span, h) in spans.iter_mut().zip(parsed.headers.iter()) {
        let (name, value) = (offset(h.name.as_bytes()), offset(h.value));
        *span = (name, name + h.name.len(), value, value + h.value.len());
    }
    let head = buf.split_to(len).freeze();
    if buf.is_empty() {
        // Nothing else buffered: the next read takes a new buffer when
        // bytes arrive (this one lives on in the head's slices).
        *buf = BytesMut::new();
    }
    // Room for the headers the proxy adds (`x-forwarded-for`,
    // `x-request-id`) without growing the map.
    let mut headers = HeaderMap::with_capacity(count + 2);
    for &(name_start, name_end, value_start, value_end) in &spans[..count] {
        let name =
            HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| bad("header name"))?;
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
    let framing = framing::request(&mut headers, version).map_err(|refused| match refused {
        framing::Refused::Malformed(why) => bad(why),
        framing::Refused::Unsupported(why) => Refusal(StatusCode::NOT_IMPLEMENTED, why),
    })?;
    let mut expect_continue = false;
    if let Some(expect) = headers.get(header::EXPECT) {
        if !expect.as_bytes().eq_ignore_ascii_case(b"100-continue") {
            return Err(Refusal(
                StatusCode::EXPECTATION_FAILED,
                "expectation not supported",
            ));
        }
        expect_continue = version == Version::HTTP_11 && framing != Framing::Length(0);
    }

    let keep_alive = connection_allows_reuse(&headers, version);
    let bodiless = method == Method::HEAD;
    // RFC 9110 §7.8. With a body, the body would have to be relayed
    // before the switch: such a request is served as an ordinary one.
    let upgrade = version == Version::HTTP_11
        && framing == Framing::Length(0)
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
    Ok(Some(RequestHead {
        request,
        keep_alive,
        bodiless,
        upgrade,
        framing,
        expect_continue,
    }))
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

/// A parsed response head.
pub(crate) struct ResponseHead {
    pub response: hyper::Response<()>,
    /// How its body ends.
    pub framing: Framing,
    /// Whether the endpoint lets the connection be reused.
    pub keep_alive: bool,
}

/// What [`parse_response`] found.
pub(crate) enum Response {
    /// An interim (`1xx`) answer, consumed.
    Interim(StatusCode),
    /// The final answer's head, consumed.
    Final(ResponseHead),
}

/// Parses a complete response head at the start of `buf`, or `None` when
/// more bytes are needed. A `101` is a final answer when the request asked
/// to `upgrade`, and invalid otherwise.
pub(crate) fn parse_response(
    buf: &mut BytesMut,
    head_request: bool,
    upgrade: bool,
) -> Result<Option<Response>, &'static str> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Response::new(&mut fields);
    let len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err("too many header fields");
        }
        Err(_) => return Err("malformed head"),
    };
    let code = parsed.code.ok_or("no status")?;
    let status = StatusCode::from_u16(code).map_err(|_| "status")?;
    let version = match parsed.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let switched = status == StatusCode::SWITCHING_PROTOCOLS;
    if switched && !upgrade {
        return Err("unrequested protocol switch");
    }
    if status.is_informational() && !switched {
        buf.advance(len);
        return Ok(Some(Response::Interim(status)));
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
        let name =
            HeaderName::from_bytes(&head[name_start..name_end]).map_err(|_| "header name")?;
        let value = HeaderValue::from_maybe_shared(head.slice(value_start..value_end))
            .map_err(|_| "header value")?;
        headers.append(name, value);
    }

    let mut keep_alive = connection_allows_reuse(&headers, version);
    let framing = framing::response(status, head_request, &mut headers, &mut keep_alive)?;
    let mut response = hyper::Response::new(());
    *response.status_mut() = status;
    *response.version_mut() = version;
    *response.headers_mut() = headers;
    Ok(Some(Response::Final(ResponseHead {
        response,
        framing,
        keep_alive,
    })))
}

/// Whether a message's `Connection` header and version let the
/// connection be reused.
pub(crate) fn connection_allows_reuse(headers: &HeaderMap, version: Version) -> bool {
    let has = |token: &str| connection_has(headers, token);
    if version == Version::HTTP_11 {
        !has("close")
    } else {
        has("keep-alive") && !has("close")
    }
}

/// Whether a `Connection` header lists `token`.
pub(crate) fn connection_has(headers: &HeaderMap, token: &str) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether a request expects `100 Continue` before its body.
pub(crate) fn expects_continue(headers: &HeaderMap) -> bool {
    headers
        .get(header::EXPECT)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
}

/// The start line of a head to write (always HTTP/1.1).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Start<'a> {
    /// A request line: the method and the target, in origin form.
    Request(&'a Method, &'a str),
    /// A status line.
    Response(StatusCode),
}

/// This hop's part of a head: written by the proxy, never copied from the
/// message, whose own framing, `Connection` and (for a request) `Expect`
/// fields are left out.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Hop {
    /// How the body is delimited; [`Delimit::Bodiless`] keeps the message's
    /// own `Content-Length` (a `HEAD` answer's says what a `GET` would get).
    pub delimit: Delimit,
    /// `Expect: 100-continue` is sent.
    pub expect: bool,
    /// A `Date` is added when the message has none (RFC 9110 §6.6.1: a
    /// response forwarded without one gets one).
    pub date: bool,
}

/// Writes a head into `out`: the start line, the message's fields except
/// the ones of its own hop, then `hop`'s, with `connection`'s options as
/// one `Connection` field.
pub(crate) fn encode_head<'a>(
    out: &mut BytesMut,
    start: Start<'_>,
    headers: &HeaderMap,
    hop: Hop,
    connection: impl IntoIterator<Item = &'a [u8]>,
) {
    use std::fmt::Write as _;
    let request = match start {
        Start::Request(method, target) => {
            out.extend_from_slice(method.as_str().as_bytes());
            out.extend_from_slice(b" ");
            out.extend_from_slice(target.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            true
        }
        Start::Response(status) => {
            out.reserve(256);
            out.extend_from_slice(b"HTTP/1.1 ");
            out.extend_from_slice(status.as_str().as_bytes());
            out.extend_from_slice(b" ");
            out.extend_from_slice(status.canonical_reason().unwrap_or_default().as_bytes());
            out.extend_from_slice(b"\r\n");
            false
        }
    };
    for (name, value) in headers {
        let own_hop = name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
            || (name == header::CONTENT_LENGTH && hop.delimit != Delimit::Bodiless)
            || (request && name == header::EXPECT);
        if own_hop {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match hop.delimit {
        Delimit::Length(n) => {
            let _ = write!(out, "content-length: {n}\r\n");
        }
        Delimit::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
        Delimit::Bodiless | Delimit::Close => {}
    }
    if hop.date && !headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        now(out);
        out.extend_from_slice(b"\r\n");
    }
    let mut listed = false;
    for option in connection {
        out.extend_from_slice(if listed { b", " } else { b"connection: " });
        out.extend_from_slice(option);
        listed = true;
    }
    if listed {
        out.extend_from_slice(b"\r\n");
    }
    if hop.expect {
        out.extend_from_slice(b"expect: 100-continue\r\n");
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

#[cfg(test)]
mod tests;
