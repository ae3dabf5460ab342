//! The data plane's one error type, in the manner of Pingora's: what went
//! wrong ([`Kind`]), on which side ([`Origin`]), and whether trying the
//! request again is safe ([`Retry`]). Retries, metrics and access logs
//! decide from it; no layer collapses upstream failures into one variant,
//! so the information a retry needs (did anything reach the endpoint? was
//! the connection a reused one?) survives to where the decision is made.
//!
//! It is small and not boxed (a kind, two tags and an optional
//! `io::Error`): it is made on the request path.

use std::fmt;
use std::io;

/// What went wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// No connection could be opened (refused, unreachable, or not within
    /// the connect timeout): nothing was sent.
    Connect,
    /// The peer closed the connection before the message's end.
    Closed,
    /// The connection failed (reset, broken pipe).
    Io,
    /// A malformed or ambiguous message, and what is wrong with it.
    Invalid(&'static str),
    /// An HTTP/2 connection or stream failed (hyper's error).
    Http2,
    /// A time limit passed: the route's or the try's timeout (upstream), or
    /// a body that stopped coming (downstream).
    Timeout,
    /// The service has `max_connections` open and `max_pending_requests`
    /// waiting (or none freed up in time): nothing was sent.
    Overflow,
}

/// Which side of the proxy the error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// The client (its request, its connection).
    Downstream,
    /// The endpoint (its connection, its answer).
    Upstream,
    /// The proxy itself (its limits).
    Internal,
}

/// Whether sending the request again is safe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Retry {
    /// Nothing reached the endpoint: any request may be sent again.
    Safe,
    /// A reused keep-alive connection closed (or failed) before any byte
    /// of the answer came back: the endpoint most likely closed it idle,
    /// and a fresh connection will do. The endpoint may still have read the
    /// request, so only an idempotent one is sent again.
    ReusedOnly,
    /// The endpoint may have acted on the request: only an idempotent one
    /// is sent again.
    Idempotent,
    /// Not the endpoint's failure, or nothing to gain: never sent again.
    Never,
}

/// An error of the data plane.
#[derive(Debug)]
pub(crate) struct Error {
    kind: Kind,
    origin: Origin,
    retry: Retry,
    source: Option<io::Error>,
}

impl Error {
    /// An error of `origin`.
    pub(crate) fn new(kind: Kind, origin: Origin, retry: Retry) -> Error {
        Error {
            kind,
            origin,
            retry,
            source: None,
        }
    }

    /// A failure of the client's: never retried.
    pub(crate) fn downstream(kind: Kind) -> Error {
        Error::new(kind, Origin::Downstream, Retry::Never)
    }

    /// A failure of the endpoint's, safe to retry as `retry` says.
    pub(crate) fn upstream(kind: Kind, retry: Retry) -> Error {
        Error::new(kind, Origin::Upstream, retry)
    }

    /// `error`, on `origin`'s connection.
    pub(crate) fn io(error: io::Error, origin: Origin, retry: Retry) -> Error {
        Error {
            source: Some(error),
            ..Error::new(Kind::Io, origin, retry)
        }
    }

    /// An HTTP/2 failure on `origin`'s side.
    pub(crate) fn http2(error: hyper::Error, origin: Origin, retry: Retry) -> Error {
        Error {
            source: Some(io::Error::other(error)),
            ..Error::new(Kind::Http2, origin, retry)
        }
    }

    /// What went wrong.
    pub(crate) fn kind(&self) -> Kind {
        self.kind
    }

    /// Which side it comes from.
    pub(crate) fn origin(&self) -> Origin {
        self.origin
    }

    /// Whether sending the request again is safe.
    pub(crate) fn retry(&self) -> Retry {
        self.retry
    }

    /// Whether a request (`idempotent` or not) may be sent again after it.
    pub(crate) fn may_retry(&self, idempotent: bool) -> bool {
        match self.retry {
            Retry::Safe => true,
            Retry::ReusedOnly | Retry::Idempotent => idempotent,
            Retry::Never => false,
        }
    }

    /// Whether the endpoint's connection broke (closed early, failed, or
    /// spoke something invalid): a "reset" to retry policies and metrics.
    pub(crate) fn is_reset(&self) -> bool {
        self.origin == Origin::Upstream
            && matches!(
                self.kind,
                Kind::Closed | Kind::Io | Kind::Invalid(_) | Kind::Http2
            )
    }

    /// The same error, marked as coming from the client.
    pub(crate) fn into_downstream(self) -> Error {
        Error {
            origin: Origin::Downstream,
            retry: Retry::Never,
            ..self
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let side = match self.origin {
            Origin::Downstream => "client",
            Origin::Upstream => "upstream",
            Origin::Internal => "proxy",
        };
        match self.kind {
            Kind::Connect => write!(f, "{side}: connect failed")?,
            Kind::Closed => write!(f, "{side} closed the connection before the message's end")?,
            Kind::Io => write!(f, "{side} connection failed")?,
            Kind::Invalid(why) => write!(f, "invalid {side} message: {why}")?,
            Kind::Http2 => write!(f, "{side} HTTP/2 stream failed")?,
            Kind::Timeout => write!(f, "{side} timed out")?,
            Kind::Overflow => write!(f, "{side}: at the connection limit")?,
        }
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Retry safety follows what reached the endpoint.
    #[test]
    fn retries_follow_what_reached_the_endpoint() {
        let connect = Error::upstream(Kind::Connect, Retry::Safe);
        assert!(connect.may_retry(false) && connect.may_retry(true));
        let reused = Error::upstream(Kind::Closed, Retry::ReusedOnly);
        assert!(reused.may_retry(true) && !reused.may_retry(false));
        assert!(reused.is_reset());
        let client = Error::downstream(Kind::Invalid("chunk size"));
        assert!(!client.may_retry(true) && !client.is_reset());
        assert_eq!(client.to_string(), "invalid client message: chunk size");
        let moved = Error::upstream(Kind::Io, Retry::Idempotent).into_downstream();
        assert_eq!(moved.origin(), Origin::Downstream);
        assert!(!moved.may_retry(true));
    }
}
