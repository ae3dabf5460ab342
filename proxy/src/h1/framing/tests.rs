//! The body decoder on its own: bytes in, pieces out, on any split.

use bytes::BytesMut;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode, Version};

use proptest::prelude::*;

use super::*;
use crate::fuzzing::{Body, decode_in_steps, encode_chunked};

/// The chunked decoder (for answers, and for requests on the server side)
/// takes well-formed bodies whole and refuses lines that another parser
/// could read another way.
#[test]
fn chunked_framing_is_read_strictly() {
    let read = |input: &[u8]| -> Result<Vec<u8>, &'static str> {
        let mut framing = Framing::Chunked(Chunked::Size);
        let mut buf = BytesMut::from(input);
        let mut body = Vec::new();
        loop {
            match decode(&mut framing, &mut buf)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok(body),
                Decoded::More => return Err("incomplete"),
            }
        }
    };
    let fine: [&[u8]; 4] = [
        b"5\r\nhello\r\n0\r\n\r\n",
        b"005;name=value;flag\r\nhello\r\n0000\r\nx-trailer: 1\r\n\r\n",
        b"5 ;ext\r\nhello\r\n0\r\n\r\n",
        b"5 \t\r\nhello\r\n0\r\n\r\n",
    ];
    for input in fine {
        assert_eq!(read(input).as_deref(), Ok(&b"hello"[..]), "{input:?}");
    }
    let big_trailers = [
        &b"0\r\n"[..],
        &b"x-t: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n".repeat(500),
        b"\r\n",
    ]
    .concat();
    let refused: [&[u8]; 10] = [
        b"+5\r\nhello\r\n0\r\n\r\n",
        b"5\x0c\r\nhello\r\n0\r\n\r\n",
        b" 5\r\nhello\r\n0\r\n\r\n",
        b"5\r\r\nhello\r\n0\r\n\r\n",
        b"5\nhello\r\n0\r\n\r\n",
        b"5;\nabc\r\nhello\r\n0\r\n\r\n",
        b"0\r\n\nGET /admin HTTP/1.1\r\nhost: a\r\n\r\n",
        b"0\r\nnot a field\r\n\r\n",
        b"1000000000000000\r\n",
        &big_trailers,
    ];
    for input in refused {
        assert!(read(input).is_err(), "{:?}", String::from_utf8_lossy(input));
    }
}

/// A body's framing: chunked, a length, or to the close.
fn framings() -> impl Strategy<Value = Framing> {
    prop_oneof![
        Just(Framing::Chunked(Chunked::Size)),
        (0u64..64).prop_map(Framing::Length),
        Just(Framing::Close),
    ]
}

/// Bytes that are mostly a chunked body, some well-formed and some not:
/// chunk-size lines (hex, extensions, stray bytes), data, line ends (CRLF,
/// bare LF or CR), trailers, and the next message's bytes after the end.
fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        "[0-9a-fA-F]{1,3}(;[a-z]{1,3}(=[a-z0-9]{0,3})?)?\r\n".prop_map(String::into_bytes),
        "[ -~]{0,12}".prop_map(String::into_bytes),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"\r".to_vec()),
        Just(b"0\r\n".to_vec()),
        "x-[a-z]{1,5}: [ -~]{0,6}\r\n".prop_map(String::into_bytes),
        prop::collection::vec(any::<u8>(), 0..6),
    ];
    prop::collection::vec(piece, 0..12).prop_map(|pieces| pieces.concat())
}

proptest! {
    /// However the bytes are split by the reads that bring them, a body
    /// decodes to the same result: the same bytes, the same end and the
    /// same bytes left after it (the next message's), or a refusal.
    #[test]
    fn any_split_of_a_body_decodes_the_same(
        framing in framings(),
        input in body_bytes(),
        step in 1usize..16,
    ) {
        let whole = decode_in_steps(framing, &input, input.len());
        let split = decode_in_steps(framing, &input, step);
        match (&whole, &split) {
            (Ok(w), Ok(s)) => prop_assert_eq!(w, s),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(false, "{:?} whole, {:?} in reads of {}", whole, split, step),
        }
    }

    /// A chunked body the proxy writes decodes, on any split, to the bytes
    /// it holds, and ends exactly where it was written to end.
    #[test]
    fn chunked_bodies_round_trip(
        data in prop::collection::vec(any::<u8>(), 0..300),
        size in 1usize..100,
        step in 1usize..64,
        next in prop::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut wire = encode_chunked(&data, size);
        wire.extend_from_slice(&next);
        let body = decode_in_steps(Framing::Chunked(Chunked::Size), &wire, step).unwrap();
        prop_assert_eq!(body, Body { data, ended: true, rest: next });
    }
}

/// A request's framing is read one way only: what could be read two ways
/// is refused, a transfer coding other than chunked is not implemented.
#[test]
fn request_framing_is_read_one_way_only() {
    let head = |fields: &[(&'static str, &'static str)]| {
        let mut h = HeaderMap::new();
        for (n, v) in fields {
            h.append(*n, HeaderValue::from_static(v));
        }
        h
    };
    let te = header::TRANSFER_ENCODING.as_str();
    let cl = header::CONTENT_LENGTH.as_str();
    let v11 = Version::HTTP_11;
    let mut chunked = head(&[(te, "chunked")]);
    assert_eq!(
        request(&mut chunked, v11),
        Ok(Framing::Chunked(Chunked::Size))
    );
    assert!(!chunked.contains_key(te), "this hop's framing is removed");
    assert_eq!(
        request(&mut head(&[(cl, "5")]), v11),
        Ok(Framing::Length(5))
    );
    assert_eq!(
        request(&mut head(&[(cl, "5, 5")]), v11),
        Ok(Framing::Length(5))
    );
    assert_eq!(request(&mut head(&[]), v11), Ok(Framing::Length(0)));
    for fields in [
        &[(te, "chunked"), (cl, "5")][..],
        &[(cl, "5"), (cl, "6")],
        &[(cl, "-1")],
    ] {
        assert!(
            matches!(request(&mut head(fields), v11), Err(Refused::Malformed(_))),
            "{fields:?}"
        );
    }
    assert!(matches!(
        request(&mut head(&[(te, "chunked")]), Version::HTTP_10),
        Err(Refused::Malformed(_))
    ));
    assert!(matches!(
        request(&mut head(&[(te, "gzip, chunked")]), v11),
        Err(Refused::Unsupported(_))
    ));
}

/// What the proxy sends is delimited by its length when known, chunked
/// otherwise; bodiless answers and requests say nothing.
#[test]
fn outbound_bodies_are_delimited_by_what_is_known() {
    assert_eq!(
        outbound_request(&Method::GET, false, Some(0)),
        Delimit::Bodiless
    );
    assert_eq!(
        outbound_request(&Method::GET, true, Some(0)),
        Delimit::Length(0)
    );
    assert_eq!(
        outbound_request(&Method::POST, false, Some(0)),
        Delimit::Length(0)
    );
    assert_eq!(
        outbound_request(&Method::POST, false, None),
        Delimit::Chunked
    );
    let ok = StatusCode::OK;
    assert_eq!(
        outbound_response(true, ok, Some(5), Version::HTTP_11),
        Delimit::Bodiless
    );
    assert_eq!(
        outbound_response(false, StatusCode::NO_CONTENT, None, Version::HTTP_11),
        Delimit::Bodiless
    );
    assert_eq!(
        outbound_response(false, ok, Some(5), Version::HTTP_11),
        Delimit::Length(5)
    );
    assert_eq!(
        outbound_response(false, ok, None, Version::HTTP_11),
        Delimit::Chunked
    );
    assert_eq!(
        outbound_response(false, ok, None, Version::HTTP_10),
        Delimit::Close
    );
}
