//! Heads on their own: parsed from bytes, encoded to bytes.

use bytes::BytesMut;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::{Method, StatusCode};
use proptest::prelude::*;

use super::*;

/// The request line's version as RFC 9112 reads it, whatever httparse
/// makes of it.
#[test]
fn request_lines_are_read_for_their_version() {
    assert_eq!(request_line(b"GET / HTTP/1.2"), Line::Partial);
    assert_eq!(request_line(b"GET / HTTP/1.2\r\n"), Line::LaterMinor(13));
    assert_eq!(request_line(b"GET / HTTP/1.9\n"), Line::LaterMinor(13));
    assert_eq!(request_line(b"GET / HTTP/2.0\r\n"), Line::Unsupported);
    assert_eq!(request_line(b"GET / HTTP/0.9\r\n"), Line::Unsupported);
    assert_eq!(request_line(b"GET /a b HTTP/1.1\r\n"), Line::Malformed);
    assert_eq!(request_line(b"GET /  HTTP/1.1\r\n"), Line::Malformed);
    assert_eq!(request_line(b"GET / HTTP/1.10\r\n"), Line::Malformed);
    assert_eq!(request_line(b"GET /\r\n"), Line::Malformed);
}

/// Header fields of the proxy's own choosing: none of them says anything
/// of the connection or the framing.
fn fields() -> impl Strategy<Value = Vec<(String, String)>> {
    prop::collection::vec(("x-[a-z0-9-]{1,10}", "[!-~]([ -~]{0,18}[!-~])?"), 0..6)
}

/// A request target in origin form.
fn target() -> impl Strategy<Value = String> {
    "/[a-zA-Z0-9/._~%-]{0,20}(\\?[a-z0-9=&]{0,20})?"
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
        "[A-Z]{1,10}".prop_map(|m| Method::from_bytes(m.as_bytes()).unwrap()),
    ]
}

/// What a request read from the wire came to: its head (as compared
/// across reads), its body, whether the body ended, and the bytes after it.
type Read = (
    String,
    String,
    HeaderMap,
    Framing,
    bool,
    Vec<u8>,
    bool,
    Vec<u8>,
);

/// Reads one request from `wire` as the server does, the bytes arriving in
/// reads of the sizes in `reads` (cycled): the head parsed again after each
/// read until it is complete, then the body decoded.
fn read_request(wire: &[u8], reads: &[usize]) -> Result<Read, String> {
    let mut sizes = reads.iter().copied().cycle();
    let mut fed = 0;
    let mut buf = BytesMut::new();
    let mut feed = |buf: &mut BytesMut| {
        let end = (fed + sizes.next().unwrap_or(1).max(1)).min(wire.len());
        buf.extend_from_slice(&wire[fed..end]);
        let more = end > fed;
        fed = end;
        more
    };
    let head = loop {
        if let Some(head) = parse_request(&mut buf, 64 * 1024).map_err(|r| format!("{r:?}"))? {
            break head;
        }
        if !feed(&mut buf) {
            return Err("incomplete head".into());
        }
    };
    let mut framing = head.framing;
    let mut body = Vec::new();
    let ended = loop {
        match framing::decode(&mut framing, &mut buf)? {
            framing::Decoded::Data(data) => body.extend_from_slice(&data),
            framing::Decoded::End => break true,
            framing::Decoded::More => {
                if !feed(&mut buf) {
                    break false;
                }
            }
        }
    };
    while feed(&mut buf) {}
    let request = head.request;
    Ok((
        request.method().to_string(),
        request.uri().to_string(),
        request.headers().clone(),
        head.framing,
        head.keep_alive,
        body,
        ended,
        buf.to_vec(),
    ))
}

proptest! {
    /// A request (head, and a body by length or chunked) reads the same on
    /// any split of its bytes into reads: the same head, the same body, and
    /// the same bytes left after it (the next request's).
    #[test]
    fn any_split_of_a_request_reads_the_same(
        method in method(),
        target in target(),
        fields in fields(),
        body in prop::collection::vec(any::<u8>(), 0..100),
        chunk in 0usize..40,
        next in "(GET / HTTP/1.1\r\n)?",
        reads in prop::collection::vec(1usize..40, 1..6),
    ) {
        let mut wire = format!("{method} {target} HTTP/1.1\r\nhost: web\r\n").into_bytes();
        for (name, value) in &fields {
            wire.extend_from_slice(format!("{name}: {value}\r\n").as_bytes());
        }
        // Chunked in chunks of `chunk` bytes, or (0) by its length.
        if chunk == 0 {
            wire.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
            wire.extend_from_slice(&body);
        } else {
            wire.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            wire.extend_from_slice(&crate::fuzzing::encode_chunked(&body, chunk));
        }
        wire.extend_from_slice(next.as_bytes());
        let whole = read_request(&wire, &[wire.len()]).unwrap();
        prop_assert_eq!(&whole.0, method.as_str());
        prop_assert_eq!(&whole.1, &target);
        prop_assert_eq!(&whole.5, &body);
        prop_assert!(whole.6, "the body ended");
        prop_assert_eq!(&whole.7, next.as_bytes());
        prop_assert_eq!(read_request(&wire, &reads).unwrap(), whole);
    }

    /// What the proxy writes parses back to the same message: start line,
    /// fields, and the framing and connection options of this hop in place
    /// of the message's own.
    #[test]
    fn encoded_requests_parse_back_to_the_same_message(
        method in method(),
        target in target(),
        fields in fields(),
        length in prop::option::of(0u64..1 << 40),
        expect in any::<bool>(),
        close in any::<bool>(),
    ) {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("web"));
        for (name, value) in &fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let own = headers.clone();
        // The message's own framing and expectation, which this hop's replace.
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
        headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("keep-alive"));
        let hop = Hop {
            delimit: length.map_or(Delimit::Chunked, Delimit::Length),
            expect,
            date: false,
        };
        let options: Vec<&[u8]> = if close { vec![b"close"] } else { vec![b"te"] };
        let mut out = BytesMut::new();
        encode_head(&mut out, Start::Request(&method, &target), &headers, hop, options);
        let head = parse_request(&mut out, 64 * 1024).unwrap().unwrap();
        prop_assert!(out.is_empty());
        prop_assert_eq!(head.request.method(), method);
        prop_assert_eq!(head.request.uri().to_string(), target);
        let framing = match length {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked(framing::Chunked::Size),
        };
        prop_assert_eq!(head.framing, framing);
        prop_assert_eq!(head.keep_alive, !close);
        prop_assert_eq!(head.expect_continue, expect && length != Some(0));
        let mut parsed = head.request.headers().clone();
        parsed.remove(header::CONNECTION);
        parsed.remove(header::CONTENT_LENGTH);
        if expect {
            prop_assert_eq!(parsed.get_all(header::EXPECT).iter().count(), 1);
            parsed.remove(header::EXPECT);
        }
        prop_assert_eq!(parsed, own);
    }

    /// The same for a response head, whose `Date` the proxy adds when the
    /// message has none.
    #[test]
    fn encoded_responses_parse_back_to_the_same_message(
        status in (200u16..600).prop_filter("has a body", |s| *s != 204 && *s != 304),
        fields in fields(),
        length in prop::option::of(0u64..1 << 40),
        date in any::<bool>(),
        close in any::<bool>(),
    ) {
        let status = StatusCode::from_u16(status).unwrap();
        let mut headers = HeaderMap::new();
        for (name, value) in &fields {
            headers.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        let own = headers.clone();
        headers.insert(header::TRANSFER_ENCODING, HeaderValue::from_static("gzip, chunked"));
        let hop = Hop {
            delimit: length.map_or(Delimit::Chunked, Delimit::Length),
            expect: false,
            date,
        };
        let options: Vec<&[u8]> = if close { vec![b"close"] } else { vec![] };
        let mut out = BytesMut::new();
        encode_head(&mut out, Start::Response(status), &headers, hop, options);
        let Some(Response::Final(head)) = parse_response(&mut out, false, false).unwrap() else {
            panic!("a final answer");
        };
        prop_assert!(out.is_empty());
        prop_assert_eq!(head.response.status(), status);
        let framing = match length {
            Some(n) => Framing::Length(n),
            None => Framing::Chunked(framing::Chunked::Size),
        };
        prop_assert_eq!(head.framing, framing);
        prop_assert_eq!(head.keep_alive, !close);
        let mut parsed = head.response.headers().clone();
        prop_assert_eq!(parsed.contains_key(header::DATE), date);
        parsed.remove(header::DATE);
        parsed.remove(header::CONTENT_LENGTH);
        parsed.remove(header::CONNECTION);
        prop_assert_eq!(parsed, own);
    }
}
