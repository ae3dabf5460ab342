//! HTTP/1.1 body framing (RFC 9112 §6–7), the one home of its rules for
//! both directions: how a message's body ends ([`Framing`], decided from a
//! request head by [`request`] and from a response head by [`response`]),
//! how a body the proxy sends is delimited ([`Delimit`]), and the one
//! decoder ([`decode`]) that takes a body out of the bytes read so far,
//! with no I/O: it answers data, end, or "need more", or names what is
//! malformed, so that it can be fuzzed and tested on any split of the
//! bytes.

use bytes::{Buf, Bytes, BytesMut};
use hyper::header::{self, HeaderMap};
use hyper::{Method, StatusCode, Version};

/// The longest chunk-size or trailer line accepted in a chunked body.
const MAX_LINE: usize = 4 * 1024;

/// The most bytes of trailer lines accepted after a chunked body.
const MAX_TRAILERS: usize = 16 * 1024;

/// The end of a chunk's data.
pub(crate) const CHUNK_END: &[u8] = b"\r\n";

/// The last chunk of a chunked body, with no trailers.
pub(crate) const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// How a body being read ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// After this many more bytes.
    Length(u64),
    /// At the last chunk, in this state.
    Chunked(Chunked),
    /// When the peer closes the connection (responses only).
    Close,
}

impl Framing {
    /// Whether the body has been read to its end.
    pub(crate) fn ended(self) -> bool {
        matches!(self, Framing::Length(0) | Framing::Chunked(Chunked::Done))
    }
}

/// Why a request's framing is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    /// It could be read more than one way, or is malformed: 400.
    Malformed(&'static str),
    /// A transfer coding other than `chunked` alone: 501.
    Unsupported(&'static str),
}

/// How a request's body ends (RFC 9112 §6): chunked when
/// `Transfer-Encoding` is `chunked` alone (and then removed: the framing is
/// this hop's), else `Content-Length` (every value the same number), else
/// empty. What could be read two ways is refused: `Transfer-Encoding` with
/// `Content-Length`, or in HTTP/1.0; conflicting lengths.
pub(crate) fn request(headers: &mut HeaderMap, version: Version) -> Result<Framing, Refused> {
    if !headers.contains_key(header::TRANSFER_ENCODING) {
        return match content_length(headers) {
            Ok(length) => Ok(Framing::Length(length.unwrap_or(0))),
            Err(_) => Err(Refused::Malformed("content-length")),
        };
    }
    if version == Version::HTTP_10 {
        return Err(Refused::Malformed(
            "transfer-encoding in an HTTP/1.0 request",
        ));
    }
    if headers.contains_key(header::CONTENT_LENGTH) {
        return Err(Refused::Malformed(
            "both transfer-encoding and content-length",
        ));
    }
    let mut codings = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .filter(|c| !c.is_empty());
    match (codings.next(), codings.next()) {
        (Some(c), None) if c.eq_ignore_ascii_case(b"chunked") => {}
        _ => return Err(Refused::Unsupported("transfer coding not supported")),
    }
    headers.remove(header::TRANSFER_ENCODING);
    Ok(Framing::Chunked(Chunked::Size))
}

/// How a response's body ends (RFC 9112 §6.3): empty for a `101` (what
/// follows is the other protocol's), for `HEAD`, `204` and `304`; then
/// chunked when the last transfer coding is `chunked`, else to the close;
/// then `Content-Length`; else to the close. `keep_alive` is cleared when
/// the framing leaves the connection unusable for another exchange (ended
/// by close, or ambiguous: `Transfer-Encoding` with `Content-Length`).
/// This hop's framing headers are removed: the next hop gets its own.
pub(crate) fn response(
    status: StatusCode,
    head_request: bool,
    headers: &mut HeaderMap,
    keep_alive: &mut bool,
) -> Result<Framing, &'static str> {
    let framing = if status == StatusCode::SWITCHING_PROTOCOLS {
        *keep_alive = false;
        Framing::Length(0)
    } else if head_request || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED
    {
        Framing::Length(0)
    } else if headers.contains_key(header::TRANSFER_ENCODING) {
        // With both, Transfer-Encoding wins and the connection is not
        // reused (RFC 9112 §6.3).
        if headers.contains_key(header::CONTENT_LENGTH) {
            *keep_alive = false;
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
                *keep_alive = false;
                Framing::Close
            }
        }
    } else if let Some(len) = content_length(headers)? {
        Framing::Length(len)
    } else {
        *keep_alive = false;
        Framing::Close
    };
    headers.remove(header::TRANSFER_ENCODING);
    if matches!(framing, Framing::Chunked(_) | Framing::Close) {
        headers.remove(header::CONTENT_LENGTH);
    }
    Ok(framing)
}

/// How a body the proxy sends is delimited on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Delimit {
    /// No body: a response to `HEAD`, a `1xx`, `204` or `304` (which keep
    /// the message's own `Content-Length`), or a request that needs no
    /// length said.
    Bodiless,
    /// By `Content-Length`, with this many bytes left.
    Length(u64),
    /// Chunked.
    Chunked,
    /// By closing the connection (to an HTTP/1.0 client, size unknown).
    Close,
}

/// How a request with a body of `length` bytes (`None`: unknown) goes
/// upstream: by its length, chunked when unknown. An empty body is
/// announced only where one is expected, or where the client announced it
/// (`had_length`).
pub(crate) fn outbound_request(method: &Method, had_length: bool, length: Option<u64>) -> Delimit {
    match length {
        None => Delimit::Chunked,
        Some(0)
            if !had_length
                && matches!(
                    *method,
                    Method::GET | Method::HEAD | Method::DELETE | Method::OPTIONS | Method::TRACE
                ) =>
        {
            Delimit::Bodiless
        }
        Some(n) => Delimit::Length(n),
    }
}

/// How a response goes to a client: no body for `HEAD` (`bodiless`) and
/// the statuses that have none; by length when the body's size is known
/// (`exact`); chunked to an HTTP/1.1 client; to the close otherwise.
pub(crate) fn outbound_response(
    bodiless: bool,
    status: StatusCode,
    exact: Option<u64>,
    version: Version,
) -> Delimit {
    if bodiless
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        Delimit::Bodiless
    } else if let Some(n) = exact {
        Delimit::Length(n)
    } else if version == Version::HTTP_11 {
        Delimit::Chunked
    } else {
        Delimit::Close
    }
}

/// Appends the size line of a chunk of `len` bytes.
pub(crate) fn encode_chunk_size(len: usize, out: &mut BytesMut) {
    use std::fmt::Write as _;
    let _ = write!(out, "{len:x}\r\n");
}

/// The body length `Content-Length` gives: every value must be the same
/// number.
pub(crate) fn content_length(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    let mut length = None;
    for value in headers.get_all(header::CONTENT_LENGTH) {
        let text = value.to_str().map_err(|_| "content-length")?;
        for part in text.split(',') {
            let part = part.trim();
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return Err("content-length");
            }
            let n: u64 = part.parse().map_err(|_| "content-length")?;
            if length.is_some_and(|l| l != n) {
                return Err("conflicting content-length");
            }
            length = Some(n);
        }
    }
    Ok(length)
}

/// Where a chunked body's decoder is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Chunked {
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
pub(crate) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete.
    End,
    /// The buffer holds no more of the body yet.
    More,
}

/// Takes the next piece of the body from `buf`, in `framing`: data, the
/// end, or "need more bytes"; an error names what is malformed. Pure: the
/// caller reads bytes into `buf` and calls it again.
pub(crate) fn decode(framing: &mut Framing, buf: &mut BytesMut) -> Result<Decoded, &'static str> {
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
/// or LF within it is malformed, and so is a line over [`MAX_LINE`] bytes,
/// whether its end is already in `buf` or not, so that the verdict does not
/// depend on how the reads split the bytes.
fn take_line(buf: &mut BytesMut) -> Result<Option<BytesMut>, &'static str> {
    match buf.iter().position(|&b| b == b'\n') {
        Some(at) if at > MAX_LINE => Err("chunk line too long"),
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

#[cfg(test)]
mod tests;
