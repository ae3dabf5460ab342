//! The body decoder on its own: bytes in, pieces out, on any split.

use bytes::BytesMut;
use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, StatusCode, Version};

use super::*;

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

/// Decodes `input` fed in pieces of `step` bytes, as reads would bring it:
/// the body, or the first error.
fn decode_in_steps(
    mut framing: Framing,
    input: &[u8],
    step: usize,
) -> Result<Vec<u8>, &'static str> {
    let mut buf = BytesMut::new();
    let mut body = Vec::new();
    let mut fed = 0;
    loop {
        match decode(&mut framing, &mut buf)? {
            Decoded::Data(data) => body.extend_from_slice(&data),
            Decoded::End => return Ok(body),
            Decoded::More if fed == input.len() => return Err("incomplete"),
            Decoded::More => {
                let end = (fed + step).min(input.len());
                buf.extend_from_slice(&input[fed..end]);
                fed = end;
            }
        }
    }
}

/// However the bytes are split by the reads that bring them, a body decodes
/// to the same result (the same bytes, or a refusal).
#[test]
fn any_split_of_a_body_decodes_the_same() {
    let chunked = Framing::Chunked(Chunked::Size);
    let cases: [(Framing, &[u8]); 5] = [
        (
            chunked,
            b"5\r\nhello\r\n6;x=y\r\n world\r\n0\r\nx-t: 1\r\n\r\n",
        ),
        (chunked, b"5\r\nhelloXX0\r\n\r\n"),
        (chunked, b"zz\r\n"),
        (Framing::Length(11), b"hello world"),
        (Framing::Length(0), b""),
    ];
    for (framing, input) in cases {
        let whole = decode_in_steps(framing, input, input.len().max(1));
        for step in 1..input.len().max(1) {
            assert_eq!(
                decode_in_steps(framing, input, step),
                whole,
                "{:?} in steps of {step}",
                String::from_utf8_lossy(input)
            );
        }
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
