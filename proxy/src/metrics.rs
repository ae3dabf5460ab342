//! The built-in proxy's counters: per listener (answers to clients by
//! status class, answers the proxy made itself by reason, latency), per
//! endpoint (tries by outcome, ejections) and per service (retries, circuit
//! breaking).
//!
//! Like outlier records, the counters outlive configurations: the driver
//! keeps them by name and forgets those of listeners and endpoints that
//! leave the configuration, so the number of series is bounded by the
//! configuration. A compiled table (and each listener's connections) holds
//! `Arc`s to them, resolved when the configuration is compiled: counting on
//! the request path is a relaxed atomic add on a handle already in hand,
//! with no lookup, lock or allocation.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyper::StatusCode;
use switchyard::metrics::{Encoder, Histogram, Type};

use super::Services;
use crate::error::{Error, Kind, Origin};

/// Why the proxy answered a request (or dropped a TCP connection) itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The listener has no configuration (it is being removed).
    NotConfigured,
    /// No route rule matches the request.
    NoRoute,
    /// The matching rule has no destination with weight.
    NoDestination,
    /// The destination service is not in the configuration.
    UnknownService,
    /// The service has `max_requests` in flight.
    CircuitOpen,
    /// The service has `max_connections` open and `max_pending_requests`
    /// waiting for one.
    PendingOverflow,
    /// A TCP connection: the service has `max_connections` open.
    ConnectionLimit,
    /// No endpoint of the service may take the request.
    NoHealthyUpstream,
    /// An HTTP/1.x request that cannot be read one way only, too large,
    /// or too slow: refused before routing (400, 408, 417, 431, 501 or
    /// 505); or a request whose body broke off (malformed framing, cut
    /// short, too slow) after it was routed (400, or the connection
    /// closed if the answer had begun).
    InvalidRequest,
    /// The endpoint could not be connected to.
    Connect,
    /// The connection broke before a response began.
    Reset,
    /// The route's or the try's timeout passed.
    Timeout,
    /// The proxy could not build the upstream request.
    Internal,
}

impl Refusal {
    /// The answer the proxy makes itself for a try that failed with
    /// `error`.
    pub(crate) fn of(error: &Error) -> Refusal {
        match (error.origin(), error.kind()) {
            (Origin::Downstream, _) => Refusal::InvalidRequest,
            (_, Kind::Overflow) => Refusal::PendingOverflow,
            (_, Kind::Connect) => Refusal::Connect,
            (_, Kind::Timeout) => Refusal::Timeout,
            _ => Refusal::Reset,
        }
    }

    /// Every reason, in label order.
    const ALL: [Refusal; 13] = [
        Refusal::NotConfigured,
        Refusal::NoRoute,
        Refusal::NoDestination,
        Refusal::UnknownService,
        Refusal::CircuitOpen,
        Refusal::PendingOverflow,
        Refusal::ConnectionLimit,
        Refusal::NoHealthyUpstream,
        Refusal::InvalidRequest,
        Refusal::Connect,
        Refusal::Reset,
        Refusal::Timeout,
        Refusal::Internal,
    ];

    /// The `reason` label.
    fn as_str(self) -> &'static str {
        match self {
            Refusal::NotConfigured => "not_configured",
            Refusal::NoRoute => "no_route",
            Refusal::NoDestination => "no_destination",
            Refusal::UnknownService => "unknown_service",
            Refusal::CircuitOpen => "circuit_open",
            Refusal::PendingOverflow => "pending_overflow",
            Refusal::ConnectionLimit => "connection_limit",
            Refusal::NoHealthyUpstream => "no_healthy_upstream",
            Refusal::InvalidRequest => "invalid_request",
            Refusal::Connect => "connect_error",
            Refusal::Reset => "reset",
            Refusal::Timeout => "timeout",
            Refusal::Internal => "internal",
        }
    }

    /// The status the client gets.
    pub(crate) fn status(self) -> StatusCode {
        match self {
            Refusal::NoRoute => StatusCode::NOT_FOUND,
            Refusal::InvalidRequest => StatusCode::BAD_REQUEST,
            Refusal::Connect | Refusal::Reset | Refusal::Internal => StatusCode::BAD_GATEWAY,
            Refusal::Timeout => StatusCode::GATEWAY_TIMEOUT,
            Refusal::NotConfigured
            | Refusal::NoDestination
            | Refusal::UnknownService
            | Refusal::CircuitOpen
            | Refusal::PendingOverflow
            | Refusal::ConnectionLimit
            | Refusal::NoHealthyUpstream => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The short text the client gets.
    pub(crate) fn message(self) -> &'static str {
        match self {
            Refusal::NotConfigured => "listener is not configured",
            Refusal::NoRoute => "no route matches",
            Refusal::NoDestination => "the route has no destination with weight",
            Refusal::UnknownService => "unknown service",
            Refusal::CircuitOpen => "circuit open (max_requests)",
            Refusal::PendingOverflow => {
                "circuit open (max_connections open, max_pending_requests waiting)"
            }
            Refusal::ConnectionLimit => "circuit open (max_connections)",
            Refusal::NoHealthyUpstream => "no healthy upstream",
            Refusal::InvalidRequest => "invalid request",
            Refusal::Connect => "upstream connect error",
            Refusal::Reset => "upstream reset or protocol error",
            Refusal::Timeout => "upstream timed out",
            Refusal::Internal => "cannot build the upstream request",
        }
    }
}

/// Status classes, `1xx` to `5xx`, by index.
const CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

/// The index of `status`'s class in [`CLASSES`].
fn class(status: StatusCode) -> usize {
    (usize::from(status.as_u16() / 100)).clamp(1, 5) - 1
}

/// What one listener did.
#[derive(Debug, Default)]
pub(crate) struct ListenerStats {
    /// Connections accepted.
    connections: AtomicU64,
    /// HTTP answers sent to clients (the proxy's own included), by class.
    responses: [AtomicU64; CLASSES.len()],
    /// Answers the proxy made itself (and TCP connections it dropped), by
    /// reason.
    refusals: [AtomicU64; Refusal::ALL.len()],
    /// Time until the answer's head was ready (the body then streams).
    latency: Histogram,
    /// Connections open now, by proxy thread; sized by the first listener
    /// opened under this name (the thread count is fixed at start).
    open: OnceLock<Arc<[AtomicUsize]>>,
}

impl ListenerStats {
    /// Counts an accepted connection.
    pub(crate) fn connection(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an HTTP answer.
    pub(crate) fn response(&self, status: StatusCode, elapsed: Duration) {
        self.responses[class(status)].fetch_add(1, Ordering::Relaxed);
        self.latency.observe(elapsed);
    }

    /// Counts an answer the proxy made itself.
    pub(crate) fn refused(&self, why: Refusal) {
        self.refusals[why as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// The listener's open connections, one counter for each of `threads`
    /// proxy threads (at least one).
    pub(crate) fn open_by_thread(&self, threads: usize) -> Arc<[AtomicUsize]> {
        self.open
            .get_or_init(|| (0..threads.max(1)).map(|_| AtomicUsize::new(0)).collect())
            .clone()
    }
}

/// What was sent to one endpoint.
#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    /// Tries answered, by status class.
    responses: [AtomicU64; CLASSES.len()],
    /// Tries that got no answer: connect error, reset, timeout.
    failures: [AtomicU64; 3],
    /// TCP relays opened.
    connections: AtomicU64,
    /// Times outlier detection ejected it.
    ejections: AtomicU64,
}

/// How a try at an endpoint failed, for [`EndpointStats::failed`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum TryFailure {
    /// No connection.
    Connect = 0,
    /// Broke before a response.
    Reset = 1,
    /// Out of time.
    Timeout = 2,
}

const TRY_FAILURES: [&str; 3] = ["connect_error", "reset", "timeout"];

impl TryFailure {
    /// How a try that failed with `error` counts against its endpoint:
    /// `None` when the endpoint is not to blame (the client's failure, or
    /// the proxy's own limits).
    pub(crate) fn of(error: &Error) -> Option<TryFailure> {
        match (error.origin(), error.kind()) {
            (Origin::Upstream, Kind::Connect) => Some(TryFailure::Connect),
            (Origin::Upstream, Kind::Timeout) => Some(TryFailure::Timeout),
            (Origin::Upstream, _) => Some(TryFailure::Reset),
            _ => None,
        }
    }
}

impl EndpointStats {
    /// Counts a try answered with `status`.
    pub(crate) fn response(&self, status: StatusCode) {
        self.responses[class(status)].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a try that got no answer.
    pub(crate) fn failed(&self, how: TryFailure) {
        self.failures[how as usize].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a TCP relay opened to the endpoint.
    pub(crate) fn connected(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an ejection.
    pub(crate) fn ejected(&self) {
        self.ejections.fetch_add(1, Ordering::Relaxed);
    }
}

/// What one service's requests went through.
#[derive(Debug, Default)]
pub(crate) struct ServiceStats {
    /// Retries made.
    pub(crate) retries: AtomicU64,
    /// Retries the policy asked for but the retry budget refused.
    pub(crate) retries_refused: AtomicU64,
    /// Requests and TCP connections refused by the circuit breaker.
    pub(crate) circuit_open: AtomicU64,
}

/// Counters by name that outlive configurations: one per listener, or per
/// endpoint of a service.
#[derive(Debug)]
pub(crate) struct ByName<T>(Mutex<HashMap<String, Arc<T>>>);

impl<T> Default for ByName<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T: Default> ByName<T> {
    /// The counters of `names`, in their order, creating missing ones and
    /// forgetting every other name. The lock is held only to update the map;
    /// compiling a configuration is the only caller.
    pub(crate) fn sync<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Vec<Arc<T>> {
        let mut map = self.0.lock().expect("counters by name");
        let wanted: Vec<(String, Arc<T>)> = names
            .into_iter()
            .map(|n| (n.to_owned(), map.entry(n.to_owned()).or_default().clone()))
            .collect();
        map.retain(|n, _| wanted.iter().any(|(w, _)| w == n));
        wanted.into_iter().map(|(_, c)| c).collect()
    }

    /// The counters of `name`, created if missing.
    pub(crate) fn get(&self, name: &str) -> Arc<T> {
        self.0
            .lock()
            .expect("counters by name")
            .entry(name.to_owned())
            .or_default()
            .clone()
    }

    /// Every name with its counters, sorted by name.
    fn all(&self) -> Vec<(String, Arc<T>)> {
        let mut all: Vec<_> = self
            .0
            .lock()
            .expect("counters by name")
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

/// A handle on the proxy's counters, for the metrics endpoint; see
/// [`super::Builtin::metrics`].
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub(super) listeners: Arc<ByName<ListenerStats>>,
    pub(super) services: Arc<Services>,
}

impl Metrics {
    /// Writes every proxy metric.
    pub fn encode(&self, enc: &mut Encoder) {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let listeners = self.listeners.all();
        let mut f = enc.family(
            "switchyard_agent_proxy_connections_total",
            Type::Counter,
            "Client connections accepted, by listener.",
        );
        for (name, s) in &listeners {
            f.sample(&[("listener", name)], load(&s.connections));
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_open_connections",
            Type::Gauge,
            "Client connections open now, by listener and proxy thread.",
        );
        for (name, s) in &listeners {
            for (thread, n) in s.open.get().iter().flat_map(|o| o.iter()).enumerate() {
                let thread = thread.to_string();
                f.sample(
                    &[("listener", name), ("thread", &thread)],
                    n.load(Ordering::Relaxed) as u64,
                );
            }
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_requests_total",
            Type::Counter,
            "HTTP requests answered, by listener and status class (the proxy's own answers included).",
        );
        for (name, s) in &listeners {
            for (class, n) in CLASSES.iter().zip(&s.responses) {
                f.sample(&[("listener", name), ("class", class)], load(n));
            }
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_errors_total",
            Type::Counter,
            "Requests the proxy answered itself, and TCP connections it dropped, by listener and reason.",
        );
        for (name, s) in &listeners {
            for (why, n) in Refusal::ALL.iter().zip(&s.refusals) {
                f.sample(&[("listener", name), ("reason", why.as_str())], load(n));
            }
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_request_duration_seconds",
            Type::Histogram,
            "Time from a request's arrival to its answer's head (retries and backoff included), by listener.",
        );
        for (name, s) in &listeners {
            f.histogram(&[("listener", name)], &s.latency);
        }

        let services = self.services.all();
        let mut f = enc.family(
            "switchyard_agent_proxy_retries_total",
            Type::Counter,
            "Retries made, by service.",
        );
        for (name, s) in &services {
            f.sample(&[("service", name)], load(&s.stats.retries));
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_retries_refused_total",
            Type::Counter,
            "Retries a policy asked for that the retry budget refused, by service.",
        );
        for (name, s) in &services {
            f.sample(&[("service", name)], load(&s.stats.retries_refused));
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_circuit_open_total",
            Type::Counter,
            "Requests and TCP connections refused by the circuit breaker (max_requests, max_connections, max_pending_requests), by service.",
        );
        for (name, s) in &services {
            f.sample(&[("service", name)], load(&s.stats.circuit_open));
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_upstream_connections",
            Type::Gauge,
            "Connections open to the service's endpoints (HTTP, busy or idle, and TCP relays), by service.",
        );
        for (name, s) in &services {
            f.sample(&[("service", name)], s.connections.limits.open() as u64);
        }

        let endpoints: Vec<(&str, String, Arc<EndpointStats>)> = services
            .iter()
            .flat_map(|(service, s)| {
                s.endpoints
                    .all()
                    .into_iter()
                    .map(move |(e, stats)| (service.as_str(), e, stats))
            })
            .collect();
        // Endpoints can be many: their series are written once non-zero.
        let mut f = enc.family(
            "switchyard_agent_proxy_upstream_requests_total",
            Type::Counter,
            "Tries sent to endpoints that got an answer, by service, endpoint and status class.",
        );
        for (service, endpoint, s) in &endpoints {
            for (class, n) in CLASSES.iter().zip(&s.responses) {
                let n = load(n);
                if n > 0 {
                    f.sample(
                        &[
                            ("service", service),
                            ("endpoint", endpoint),
                            ("class", class),
                        ],
                        n,
                    );
                }
            }
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_upstream_failures_total",
            Type::Counter,
            "Tries sent to endpoints that got no answer, by service, endpoint and reason.",
        );
        for (service, endpoint, s) in &endpoints {
            for (why, n) in TRY_FAILURES.iter().zip(&s.failures) {
                let n = load(n);
                if n > 0 {
                    f.sample(
                        &[
                            ("service", service),
                            ("endpoint", endpoint),
                            ("reason", why),
                        ],
                        n,
                    );
                }
            }
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_upstream_connections_total",
            Type::Counter,
            "TCP relays opened to endpoints, by service and endpoint.",
        );
        for (service, endpoint, s) in &endpoints {
            let n = load(&s.connections);
            if n > 0 {
                f.sample(&[("service", service), ("endpoint", endpoint)], n);
            }
        }
        let mut f = enc.family(
            "switchyard_agent_proxy_ejections_total",
            Type::Counter,
            "Times outlier detection ejected an endpoint, by service and endpoint.",
        );
        for (service, endpoint, s) in &endpoints {
            let n = load(&s.ejections);
            if n > 0 {
                f.sample(&[("service", service), ("endpoint", endpoint)], n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_fall_in_their_class() {
        assert_eq!(CLASSES[class(StatusCode::CONTINUE)], "1xx");
        assert_eq!(CLASSES[class(StatusCode::OK)], "2xx");
        assert_eq!(CLASSES[class(StatusCode::NOT_MODIFIED)], "3xx");
        assert_eq!(CLASSES[class(StatusCode::NOT_FOUND)], "4xx");
        assert_eq!(CLASSES[class(StatusCode::GATEWAY_TIMEOUT)], "5xx");
        assert_eq!(CLASSES[class(StatusCode::from_u16(599).unwrap())], "5xx");
    }

    #[test]
    fn every_refusal_has_its_own_counter_and_an_error_status() {
        for (i, why) in Refusal::ALL.iter().enumerate() {
            assert_eq!(*why as usize, i, "{}", why.as_str());
            assert!(why.status().as_u16() >= 400, "{}", why.as_str());
        }
        let labels: std::collections::BTreeSet<_> =
            Refusal::ALL.iter().map(|w| w.as_str()).collect();
        assert_eq!(labels.len(), Refusal::ALL.len());
    }

    #[test]
    fn counters_by_name_outlive_a_change_and_leave_with_their_name() {
        let by: ByName<EndpointStats> = ByName::default();
        let first = by.sync(["a", "b"]);
        first[1].response(StatusCode::OK);
        let second = by.sync(["b", "c"]);
        assert!(Arc::ptr_eq(&first[1], &second[0]), "b keeps its counters");
        let names: Vec<String> = by.all().into_iter().map(|(n, _)| n).collect();
        assert_eq!(names, ["b", "c"], "a is forgotten");
        assert_eq!(second[0].responses[1].load(Ordering::Relaxed), 1);
    }
}
