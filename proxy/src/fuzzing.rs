//! Checks of the HTTP/1 codec on arbitrary bytes, for the fuzz targets in
//! `fuzz/` (built with the `fuzzing` feature) and for the unit tests that
//! keep every input the fuzzers found as a regression test. Each check
//! panics when the codec breaks a promise it makes; otherwise it returns.
//!
//! The codec is private to the proxy: these checks are how it is reached
//! from outside, so that fuzzing needs no wider API.

use bytes::BytesMut;
use hyper::Method;
use hyper::header::{self, HeaderMap};

use crate::h1::framing::{self, CHUNK_END, Chunked, Decoded, Delimit, Framing, LAST_CHUNK};
use crate::h1::head::{self, Hop, Refusal, RequestHead, Start};

/// The largest request head the checks accept: the proxy's listeners'.
use crate::http::MAX_HEAD;

/// A request head as compared across parses.
#[derive(Debug, PartialEq)]
struct Parsed {
    /// How many bytes the head took.
    len: usize,
    method: Method,
    uri: String,
    version: hyper::Version,
    headers: HeaderMap,
    keep_alive: bool,
    bodiless: bool,
    upgrade: bool,
    framing: Framing,
    expect_continue: bool,
}

/// Parses a request head from `bytes` as the server does, noting how many
/// bytes it took.
fn parse(bytes: &[u8]) -> Result<Option<Parsed>, Refusal> {
    let mut buf = BytesMut::from(bytes);
    let Some(RequestHead {
        request,
        keep_alive,
        bodiless,
        upgrade,
        framing,
        expect_continue,
    }) = head::parse_request(&mut buf, MAX_HEAD)?
    else {
        // (An HTTP/1.2 to 1.9 request line may already read as HTTP/1.1,
        // as it will once complete.)
        assert_eq!(buf.len(), bytes.len(), "an incomplete head consumed bytes");
        return Ok(None);
    };
    let len = bytes.len() - buf.len();
    assert_eq!(&buf[..], &bytes[len..], "the bytes after the head changed");
    Ok(Some(Parsed {
        len,
        method: request.method().clone(),
        uri: request.uri().to_string(),
        version: request.version(),
        headers: request.headers().clone(),
        keep_alive,
        bodiless,
        upgrade,
        framing,
        expect_continue,
    }))
}

/// The request head parser on arbitrary bytes:
///
/// - it never panics, and a complete head leaves the bytes after it as they
///   were (the next request's, or the body's);
/// - read in two parts, the bytes give what they give whole: "need more"
///   before the head's last byte has arrived (never a refusal of a head
///   that is valid), the same head once it has;
/// - a head it accepts (with a `Host`), written again by `encode_head` as
///   the proxy sends it upstream, parses back to the same method, target, fields, framing and
///   connection options.
pub fn request_head(bytes: &[u8]) {
    let whole = parse(bytes);
    if let Ok(Some(parsed)) = &whole {
        assert!(parsed.len <= bytes.len() && parsed.len <= MAX_HEAD);
    }
    // A few cuts, spread over the input, stand in for every split of it.
    let cuts = [
        bytes.len() / 2,
        bytes.len() / 3,
        bytes.len().saturating_sub(1),
    ];
    for cut in cuts.into_iter().filter(|&c| c < bytes.len()) {
        let part = parse(&bytes[..cut]);
        match (&whole, &part) {
            (Ok(Some(h)), Ok(Some(p))) => {
                assert!(h.len <= cut, "a head complete before it ended");
                assert_eq!(h, p, "a head parsed differently from its first {cut} bytes");
            }
            (Ok(Some(h)), Ok(None)) => assert!(h.len > cut, "a complete head not seen at {cut}"),
            (Ok(Some(h)), Err(e)) => {
                panic!(
                    "the first {cut} of a valid head's {} bytes refused: {e:?}",
                    h.len
                )
            }
            (Ok(None), p) => assert!(
                matches!(p, Ok(None)),
                "{p:?} for part of an incomplete head"
            ),
            (Err(_), Ok(Some(_))) => panic!("a refused head accepted from its first {cut} bytes"),
            (Err(_), _) => {}
        }
    }
    // An HTTP/1.0 request may come without a `Host`; written as HTTP/1.1
    // it must have one, which the checks would have to invent.
    if let Ok(Some(parsed)) = whole
        && parsed.headers.contains_key(header::HOST)
    {
        round_trip(&parsed);
    }
}

/// Writes `parsed` as the proxy sends a request upstream and checks that it
/// parses back to the same request (as HTTP/1.1, in origin form).
fn round_trip(parsed: &Parsed) {
    let uri: hyper::Uri = parsed.uri.parse().expect("a parsed target parses again");
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let delimit = match parsed.framing {
        Framing::Length(n) => Delimit::Length(n),
        Framing::Chunked(_) => Delimit::Chunked,
        Framing::Close => unreachable!("a request's body ends by close"),
    };
    let hop = Hop {
        delimit,
        expect: parsed.expect_continue,
        date: false,
    };
    let mut options: Vec<&[u8]> = Vec::new();
    if !parsed.keep_alive {
        options.push(b"close");
    }
    if parsed.upgrade {
        options.push(b"upgrade");
    }
    let mut out = BytesMut::new();
    head::encode_head(
        &mut out,
        Start::Request(&parsed.method, target),
        &parsed.headers,
        hop,
        options,
    );
    let written = out.clone();
    let again = match parse(&out) {
        Ok(Some(again)) => again,
        other => panic!(
            "{:?} written as {:?} parses as {other:?}",
            parsed,
            String::from_utf8_lossy(&written)
        ),
    };
    assert_eq!(
        again.len,
        written.len(),
        "the written head has trailing bytes"
    );
    let own = |headers: &HeaderMap| {
        let mut headers = headers.clone();
        for name in [
            header::CONNECTION,
            header::CONTENT_LENGTH,
            header::TRANSFER_ENCODING,
            header::EXPECT,
        ] {
            headers.remove(name);
        }
        headers
    };
    let context = || {
        format!(
            "{parsed:?} written as {:?}",
            String::from_utf8_lossy(&written)
        )
    };
    assert_eq!(again.method, parsed.method, "{}", context());
    assert_eq!(again.uri, target, "{}", context());
    assert_eq!(own(&again.headers), own(&parsed.headers), "{}", context());
    assert_eq!(again.framing, parsed.framing, "{}", context());
    assert_eq!(again.keep_alive, parsed.keep_alive, "{}", context());
    assert_eq!(again.upgrade, parsed.upgrade, "{}", context());
    assert_eq!(
        again.expect_continue,
        parsed.expect_continue,
        "{}",
        context()
    );
    assert_eq!(again.bodiless, parsed.bodiless, "{}", context());
}

/// What decoding a whole body came to: the body, whether it ended (or the
/// bytes ran out first), and the bytes left after it.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Body {
    pub data: Vec<u8>,
    pub ended: bool,
    pub rest: Vec<u8>,
}

/// Decodes a body in `framing` out of `input`, fed `step` bytes at a time as
/// reads would bring it: the body, or the first error.
pub(crate) fn decode_in_steps(
    mut framing: Framing,
    input: &[u8],
    step: usize,
) -> Result<Body, &'static str> {
    let step = step.max(1);
    let mut buf = BytesMut::new();
    let mut data = Vec::new();
    let mut fed = 0;
    loop {
        match framing::decode(&mut framing, &mut buf)? {
            Decoded::Data(piece) => {
                assert!(!piece.is_empty(), "an empty piece of body");
                data.extend_from_slice(&piece);
            }
            Decoded::End => {
                assert!(framing.ended(), "the end of a body that has not ended");
                let mut rest = buf.to_vec();
                rest.extend_from_slice(&input[fed..]);
                return Ok(Body {
                    data,
                    ended: true,
                    rest,
                });
            }
            Decoded::More if fed == input.len() => {
                return Ok(Body {
                    data,
                    ended: false,
                    rest: buf.to_vec(),
                });
            }
            Decoded::More => {
                let end = fed.saturating_add(step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

/// A chunked body holding `data`, in chunks of `size` bytes (the last one
/// shorter).
pub(crate) fn encode_chunked(data: &[u8], size: usize) -> Vec<u8> {
    let mut out = BytesMut::new();
    for chunk in data.chunks(size.max(1)) {
        framing::encode_chunk_size(chunk.len(), &mut out);
        out.extend_from_slice(chunk);
        out.extend_from_slice(CHUNK_END);
    }
    out.extend_from_slice(LAST_CHUNK);
    out.to_vec()
}

/// The body decoder on arbitrary bytes. The first byte chooses the framing
/// (chunked, a length given by the next two bytes, or to the close) and the
/// size of the reads; the rest is the body:
///
/// - decoding never panics, never yields an empty piece, and never yields
///   more than a length allows;
/// - the body, where it ends and the bytes left after it (the next
///   message's) are the same whatever the size of the reads;
/// - a chunked body it accepts, chunked again by the proxy's encoder,
///   decodes to the same bytes.
pub fn body(bytes: &[u8]) {
    let Some((&control, rest)) = bytes.split_first() else {
        return;
    };
    let step = usize::from(control >> 2) + 1;
    let (framing, input) = match control & 3 {
        0 | 1 => (Framing::Chunked(Chunked::Size), rest),
        2 if rest.len() >= 2 => (
            Framing::Length(u64::from(u16::from_be_bytes([rest[0], rest[1]]))),
            &rest[2..],
        ),
        _ => (Framing::Close, rest),
    };
    let whole = decode_in_steps(framing, input, input.len());
    let split = decode_in_steps(framing, input, step);
    match (&whole, &split) {
        (Ok(w), Ok(s)) => assert_eq!(w, s, "{framing:?} in reads of {step} bytes"),
        // The reason may differ (a line too long is seen before its end
        // arrives), the verdict may not.
        (Err(_), Err(_)) => {}
        _ => panic!("{framing:?}: {whole:?} whole, {split:?} in reads of {step} bytes"),
    }
    let Ok(whole) = whole else {
        return;
    };
    match framing {
        Framing::Length(n) => {
            assert!(whole.data.len() as u64 <= n);
            assert_eq!(whole.ended, whole.data.len() as u64 == n);
        }
        Framing::Close => assert!(!whole.ended && whole.data == input),
        Framing::Chunked(_) if whole.ended => {
            let again = encode_chunked(&whole.data, step * 7);
            let decoded = decode_in_steps(framing, &again, step).expect("the proxy's chunks");
            assert_eq!(decoded.data, whole.data, "chunked again as {again:?}");
            assert!(decoded.ended && decoded.rest.is_empty());
        }
        Framing::Chunked(_) => {}
    }
}

#[cfg(test)]
mod tests;
