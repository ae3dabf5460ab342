//! gRPC calls the proxy answers itself. A gRPC client reads a call's
//! outcome from `grpc-status`, not from the HTTP status: a `503` with a
//! text body is a protocol error to it ("unexpected HTTP status"), which
//! hides why the call failed. So a request with a gRPC content type that
//! the proxy refuses (no route, no healthy endpoint, circuit open, timeout,
//! invalid request, connect failure…) is answered as a gRPC server would
//! end a failed call, as Envoy does: HTTP 200, `content-type:
//! application/grpc`, `grpc-status` and a percent-encoded `grpc-message`,
//! in one header block that ends the stream ("Trailers-Only").
//!
//! The client's own deadline (`grpc-timeout`) is read here too: the proxy
//! gives up on the call when it passes, if before the route's timeout.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::Response;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::http::Body;
use super::metrics::Refusal;

/// A gRPC status code (the `grpc-status` of a failed call).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Code {
    /// The deadline passed before the call completed.
    DeadlineExceeded = 4,
    /// The proxy's limits for the service are used up.
    ResourceExhausted = 8,
    /// Nothing serves the method.
    Unimplemented = 12,
    /// The request was malformed, or the proxy failed.
    Internal = 13,
    /// No endpoint could take the call now; trying again later may work.
    Unavailable = 14,
}

impl Code {
    /// The code for a call the proxy refused for `why`.
    ///
    /// Envoy's mapping of its local replies (the one gRPC documents for
    /// HTTP statuses) is followed: no route is `404`, so UNIMPLEMENTED; a
    /// malformed request is `400`, so INTERNAL; the `502`s and `503`s
    /// (connect failure, reset, no healthy endpoint, no configuration) are
    /// UNAVAILABLE. Two differ, to say more than the HTTP status does: a
    /// timeout is DEADLINE_EXCEEDED rather than Envoy's UNAVAILABLE, since
    /// the endpoint may have acted on the call and UNAVAILABLE tells a
    /// client that trying again is safe; and the service's circuit breaker
    /// (`max_requests`, or `max_connections` with `max_pending_requests`)
    /// is RESOURCE_EXHAUSTED, the code gRPC gives to a server out of
    /// resources, which a client's retry policy does not retry at once.
    pub(crate) fn of(why: Refusal) -> Code {
        match why {
            Refusal::NoRoute => Code::Unimplemented,
            Refusal::Timeout => Code::DeadlineExceeded,
            Refusal::CircuitOpen | Refusal::PendingOverflow | Refusal::ConnectionLimit => {
                Code::ResourceExhausted
            }
            Refusal::InvalidRequest | Refusal::Internal => Code::Internal,
            Refusal::NotConfigured
            | Refusal::NoDestination
            | Refusal::UnknownService
            | Refusal::NoHealthyUpstream
            | Refusal::Connect
            | Refusal::Reset => Code::Unavailable,
        }
    }
}

/// What the proxy keeps of a gRPC request: that it is one, and its
/// deadline.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Call {
    /// When the client's `grpc-timeout` runs out, if it sent one.
    pub deadline: Option<Instant>,
}

impl Call {
    /// The gRPC call `headers` make (a gRPC content type), started at
    /// `started`; `None` for any other request.
    pub(crate) fn of(headers: &HeaderMap, started: Instant) -> Option<Call> {
        let content_type = headers.get(header::CONTENT_TYPE)?;
        if !is_grpc(content_type.as_bytes()) {
            return None;
        }
        let deadline = headers
            .get(GRPC_TIMEOUT)
            .and_then(|v| timeout(v.as_bytes()))
            .and_then(|t| started.checked_add(t));
        Some(Call { deadline })
    }
}

const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// Whether a content type is gRPC's: `application/grpc`, alone or with a
/// message format (`application/grpc+proto`) or parameters. gRPC-Web
/// (`application/grpc-web…`) is not: its clients read another framing.
fn is_grpc(content_type: &[u8]) -> bool {
    const GRPC: &[u8] = b"application/grpc";
    content_type.len() >= GRPC.len()
        && content_type[..GRPC.len()].eq_ignore_ascii_case(GRPC)
        && matches!(content_type.get(GRPC.len()), None | Some(b'+' | b';'))
}

/// A `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`,
/// `m`, `u`, `n`), as the gRPC over HTTP/2 protocol writes it; `None` when
/// it is malformed, in which case the route's timeout alone applies.
pub(crate) fn timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 99,999,999: no overflow below, whatever the unit.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The proxy's answer to a gRPC call it refused for `why`: Trailers-Only,
/// with the status [`Code::of`] gives and the same text as the HTTP
/// answer's body. The refusal rides along (as an extension) so that the
/// listener's counters class the answer by the HTTP status it stands for,
/// as they class every other refusal.
pub(crate) fn reply(why: Refusal) -> Response<Body> {
    let body = Empty::<Bytes>::new()
        .map_err(|never| match never {})
        .boxed();
    let mut resp = Response::new(body);
    let headers = resp.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(GRPC_STATUS, HeaderValue::from(Code::of(why) as u16));
    headers.insert(
        GRPC_MESSAGE,
        encode_message(&format!("switchyard: {}", why.message())),
    );
    resp.extensions_mut().insert(why);
    resp
}

/// `message` as `grpc-message` carries it: bytes outside printable ASCII,
/// and `%` itself, percent-encoded (uppercase hex), the rest as they are.
fn encode_message(message: &str) -> HeaderValue {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = Vec::with_capacity(message.len());
    for &b in message.as_bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(&[b'%', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
        }
    }
    HeaderValue::from_bytes(&out).expect("printable ASCII is a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_content_types_are_recognised() {
        for yes in [
            "application/grpc",
            "application/grpc+proto",
            "Application/GRPC+json",
            "application/grpc;charset=utf-8",
        ] {
            assert!(is_grpc(yes.as_bytes()), "{yes}");
        }
        for no in [
            "application/grpc-web",
            "application/grpc-web+proto",
            "application/grpcx",
            "application/json",
            "application/grp",
            "",
        ] {
            assert!(!is_grpc(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn timeouts_are_read_as_the_protocol_writes_them() {
        let ok = [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("15S", Duration::from_secs(15)),
            ("250m", Duration::from_millis(250)),
            ("99999999u", Duration::from_micros(99_999_999)),
            ("7n", Duration::from_nanos(7)),
            ("0m", Duration::ZERO),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
        ];
        for (text, want) in ok {
            assert_eq!(timeout(text.as_bytes()), Some(want), "{text}");
        }
        for bad in [
            "",
            "m",
            "100",
            "100x",
            "123456789m",
            "-1S",
            "1.5S",
            " 1S",
            "1S ",
            "1s",
            "+1S",
        ] {
            assert_eq!(timeout(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_call_has_the_earlier_deadline_of_its_header() {
        let now = Instant::now();
        let mut headers = HeaderMap::new();
        assert!(Call::of(&headers, now).is_none(), "not gRPC");
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        assert_eq!(Call::of(&headers, now).unwrap().deadline, None);
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("300m"));
        assert_eq!(
            Call::of(&headers, now).unwrap().deadline,
            Some(now + Duration::from_millis(300))
        );
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        assert_eq!(Call::of(&headers, now).unwrap().deadline, None);
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(encode_message("no route matches"), "no route matches");
        assert_eq!(encode_message("100% sure"), "100%25 sure");
        assert_eq!(encode_message("a\nb\u{e9}"), "a%0Ab%C3%A9");
    }

    /// Every refusal has a code, and the answer is a complete gRPC status:
    /// no body, the status and message in the one header block.
    #[test]
    fn replies_are_trailers_only() {
        use hyper::body::Body as _;
        let resp = reply(Refusal::NoHealthyUpstream);
        assert_eq!(resp.status(), 200);
        assert!(resp.body().is_end_stream());
        let h = resp.headers();
        assert_eq!(h[header::CONTENT_TYPE], "application/grpc");
        assert_eq!(h[GRPC_STATUS], "14");
        assert_eq!(h[GRPC_MESSAGE], "switchyard: no healthy upstream");
        assert_eq!(
            resp.extensions().get::<Refusal>(),
            Some(&Refusal::NoHealthyUpstream)
        );
        assert_eq!(Code::of(Refusal::NoRoute), Code::Unimplemented);
        assert_eq!(Code::of(Refusal::Timeout), Code::DeadlineExceeded);
        assert_eq!(Code::of(Refusal::CircuitOpen), Code::ResourceExhausted);
        assert_eq!(Code::of(Refusal::InvalidRequest), Code::Internal);
        assert_eq!(Code::of(Refusal::Connect), Code::Unavailable);
    }
}
