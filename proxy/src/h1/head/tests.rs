//! Heads on their own: parsed from bytes, encoded to bytes.

use bytes::BytesMut;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode};

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

/// A request head parses to the same request on any split of its bytes:
/// "need more" until its last byte, then the whole head.
#[test]
fn a_request_head_parses_the_same_on_any_split() {
    let raw = b"POST /a?b=c HTTP/1.1\r\nhost: web\r\nx-one: 1\r\ncontent-length: 3\r\n\r\nabc";
    let head_len = raw.len() - 3;
    for cut in 0..head_len {
        let mut buf = BytesMut::from(&raw[..cut]);
        assert!(
            parse_request(&mut buf, 64 * 1024).unwrap().is_none(),
            "complete after {cut} bytes"
        );
    }
    let mut buf = BytesMut::from(&raw[..]);
    let head = parse_request(&mut buf, 64 * 1024).unwrap().unwrap();
    assert_eq!(head.request.method(), Method::POST);
    assert_eq!(head.request.uri(), "/a?b=c");
    assert_eq!(head.request.headers()["x-one"], "1");
    assert_eq!(head.framing, Framing::Length(3));
    assert!(head.keep_alive && !head.bodiless && !head.upgrade);
    assert_eq!(&buf[..], b"abc", "the body stays in the buffer");
}

/// What the proxy writes parses back to the same message: start line,
/// fields, and the framing of this hop in place of the message's own.
#[test]
fn encoded_heads_parse_back_to_the_same_message() {
    let mut headers = HeaderMap::new();
    headers.insert(header::HOST, HeaderValue::from_static("web"));
    headers.append("x-many", HeaderValue::from_static("1"));
    headers.append("x-many", HeaderValue::from_static("2"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from_static("99"));
    headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
    let mut out = BytesMut::new();
    let hop = Hop {
        delimit: Delimit::Length(5),
        expect: true,
        date: false,
    };
    let method = Method::PUT;
    encode_head(
        &mut out,
        Start::Request(&method, "/p"),
        &headers,
        hop,
        [&b"te"[..]],
    );
    out.extend_from_slice(b"hello");
    let head = parse_request(&mut out, 64 * 1024).unwrap().unwrap();
    assert_eq!(head.request.method(), Method::PUT);
    assert_eq!(head.request.uri(), "/p");
    let parsed = head.request.headers();
    assert_eq!(parsed.get_all("x-many").iter().count(), 2);
    assert_eq!(parsed[header::CONTENT_LENGTH], "5", "this hop's length");
    assert_eq!(parsed.get_all(header::EXPECT).iter().count(), 1);
    assert_eq!(parsed[header::CONNECTION], "te");
    assert!(head.expect_continue);
    assert_eq!(head.framing, Framing::Length(5));

    let mut out = BytesMut::new();
    let hop = Hop {
        delimit: Delimit::Chunked,
        expect: false,
        date: true,
    };
    encode_head(
        &mut out,
        Start::Response(StatusCode::OK),
        &headers,
        hop,
        [&b"close"[..]],
    );
    let Some(Response::Final(head)) = parse_response(&mut out, false, false).unwrap() else {
        panic!("a final answer");
    };
    assert_eq!(head.response.status(), StatusCode::OK);
    assert_eq!(head.framing, Framing::Chunked(framing::Chunked::Size));
    assert!(!head.keep_alive, "connection: close");
    assert!(head.response.headers().contains_key(header::DATE));
    assert!(!head.response.headers().contains_key(header::CONTENT_LENGTH));
}
