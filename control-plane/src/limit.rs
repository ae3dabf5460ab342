//! The request size limit: a tower layer that refuses a gRPC message larger
//! than the limit with `RESOURCE_EXHAUSTED` naming the limit.
//!
//! tonic enforces `max_decoding_message_size` itself, but answers
//! `OUT_OF_RANGE` with a message about "decoded message length", which
//! tells a client neither that the request was too large nor what the
//! limit is. This layer reads each message's 5-byte gRPC prefix as the
//! request body streams in (it never buffers or copies a payload) and
//! fails the body as soon as a prefix announces more than the limit; tonic
//! passes that error to the client as the call's status. The services
//! keep tonic's own limit at the same value as a second line.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use http_body::Frame;
use tonic::Status;
use tonic::body::Body;
use tonic_types::{ErrorDetails, StatusExt};

/// The default limit on one request message: 4 MiB, as gRPC's default.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 4 << 20;

/// The `ErrorInfo.reason` of the status: clients (yardctl) tell a request
/// that will never fit from a transient exhaustion (stream limits).
pub const REASON: &str = "REQUEST_TOO_LARGE";
/// The `ErrorInfo.domain` of the status.
pub const DOMAIN: &str = "switchyard.v1";

/// The status for a request message of `size` bytes over `limit`.
pub fn too_large(size: u64, limit: usize) -> Status {
    Status::with_error_details(
        tonic::Code::ResourceExhausted,
        format!(
            "the request message is {size} bytes, over the control plane's limit of {limit} \
             bytes ({}): send fewer items per request, or raise --max-request-size",
            human(limit)
        ),
        ErrorDetails::with_error_info(
            REASON,
            DOMAIN,
            [
                ("size".to_owned(), size.to_string()),
                ("limit".to_owned(), limit.to_string()),
            ],
        ),
    )
}

/// `4194304` as `4 MiB`, `1536` as `1.5 KiB`.
pub fn human(bytes: usize) -> String {
    const UNITS: [&str; 4] = ["bytes", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else if value.fract() == 0.0 {
        format!("{value} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// The layer: every request body of the services under it is checked.
#[derive(Debug, Clone, Copy)]
pub struct Layer {
    limit: usize,
}

impl Layer {
    /// Refuses request messages larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { limit }
    }
}

impl<S> tower_layer::Layer<S> for Layer {
    type Service = Service<S>;

    fn layer(&self, inner: S) -> Service<S> {
        Service {
            inner,
            limit: self.limit,
        }
    }
}

/// [`Layer`]'s service.
#[derive(Debug, Clone)]
pub struct Service<S> {
    inner: S,
    limit: usize,
}

impl<S> tower_service::Service<http::Request<Body>> for Service<S>
where
    S: tower_service::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> S::Future {
        let limit = self.limit;
        self.inner
            .call(request.map(|body| Body::new(Limited::new(body, limit))))
    }
}

/// Where [`Limited`] is in the stream of length-prefixed messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading a prefix: this many of its 5 bytes seen, the length so far.
    Prefix { seen: u8, len: u64 },
    /// Inside a message's payload: this many bytes to go.
    Payload(u64),
}

/// A request body that fails once a message prefix announces more than
/// the limit.
struct Limited {
    body: Body,
    limit: usize,
    state: State,
    failed: bool,
}

impl Limited {
    fn new(body: Body, limit: usize) -> Self {
        Self {
            body,
            limit,
            state: State::Prefix { seen: 0, len: 0 },
            failed: false,
        }
    }

    /// Follows the prefixes in `data`; the size of the first message over
    /// the limit, if any.
    fn scan(&mut self, mut data: &[u8]) -> Option<u64> {
        while !data.is_empty() {
            match self.state {
                State::Payload(left) => {
                    let n = left.min(data.len() as u64);
                    data.advance(n as usize);
                    self.state = match left - n {
                        0 => State::Prefix { seen: 0, len: 0 },
                        left => State::Payload(left),
                    };
                }
                State::Prefix { seen, len } => {
                    // Byte 0 is the compression flag; bytes 1..5 the
                    // big-endian length.
                    let len = if seen == 0 {
                        0
                    } else {
                        (len << 8) | u64::from(data[0])
                    };
                    data.advance(1);
                    let seen = seen + 1;
                    self.state = if seen < 5 {
                        State::Prefix { seen, len }
                    } else if len > self.limit as u64 {
                        return Some(len);
                    } else if len == 0 {
                        State::Prefix { seen: 0, len: 0 }
                    } else {
                        State::Payload(len)
                    };
                }
            }
        }
        None
    }
}

impl http_body::Body for Limited {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let frame = match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref()
            && let Some(size) = self.scan(data)
        {
            self.failed = true;
            return Poll::Ready(Some(Err(too_large(size, self.limit))));
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.failed || self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limited(limit: usize) -> Limited {
        Limited::new(Body::empty(), limit)
    }

    fn message(len: u32) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&len.to_be_bytes());
        m.resize(5 + len as usize, 7);
        m
    }

    #[test]
    fn follows_prefixes_split_anywhere() {
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(100));
        stream.extend(message(101));
        // Whole, and cut at every byte: the same answer.
        assert_eq!(limited(100).scan(&stream), Some(101));
        for size in [1, 2, 5, 7] {
            let mut l = limited(100);
            let found = stream.chunks(size).find_map(|c| l.scan(c));
            assert_eq!(found, Some(101), "chunks of {size}");
        }
        assert_eq!(limited(101).scan(&stream), None);
    }

    #[test]
    fn message_names_the_limit() {
        let status = too_large(5 << 20, 4 << 20);
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert!(
            status.message().contains("limit of 4194304 bytes (4 MiB)"),
            "{}",
            status.message()
        );
        assert_eq!(status.get_details_error_info().unwrap().reason, REASON);
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(100), "100 bytes");
    }
}
