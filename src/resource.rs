//! Domain types for Switchyard's resources, and their validating conversion
//! from the generated protobuf types.
//!
//! A domain value is always valid: defaults are filled in, regular
//! expressions compiled, ports narrowed. Conversion reports every problem at
//! once, each with the path of the field at fault relative to a caller-given
//! prefix (e.g. `items[3].route.rules[0].matches[1].path.regex`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use crate::pb;
use crate::validate::{self as check, Invalid, Violations, join};

/// Free-form labels, ordered so they compare and encode deterministically.
pub type Labels = BTreeMap<String, String>;

/// The kinds of operator-managed resources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// [`Service`].
    Service,
    /// [`Endpoint`].
    Endpoint,
    /// [`Route`].
    Route,
    /// [`Listener`].
    Listener,
}

impl Kind {
    /// Every kind, in dependency order (a kind only references earlier ones,
    /// except listeners, which reference routes and services).
    pub const ALL: [Kind; 4] = [Kind::Service, Kind::Endpoint, Kind::Route, Kind::Listener];

    /// The lowercase name used in storage, logs and manifests.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Endpoint => "endpoint",
            Kind::Route => "route",
            Kind::Listener => "listener",
        }
    }

    /// Parses [`Kind::as_str`]'s output.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Converts the protobuf enum value; `None` for unspecified or unknown.
    pub fn from_pb(value: i32) -> Option<Kind> {
        match pb::Kind::try_from(value).ok()? {
            pb::Kind::Unspecified => None,
            pb::Kind::Service => Some(Kind::Service),
            pb::Kind::Endpoint => Some(Kind::Endpoint),
            pb::Kind::Route => Some(Kind::Route),
            pb::Kind::Listener => Some(Kind::Listener),
        }
    }

    /// The protobuf enum value.
    pub fn to_pb(self) -> pb::Kind {
        match self {
            Kind::Service => pb::Kind::Service,
            Kind::Endpoint => pb::Kind::Endpoint,
            Kind::Route => pb::Kind::Route,
            Kind::Listener => pb::Kind::Listener,
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Names one resource: its kind and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ref {
    /// The resource's kind.
    pub kind: Kind,
    /// The resource's name.
    pub name: String,
}

impl Ref {
    /// A reference to `kind`/`name`.
    pub fn new(kind: Kind, name: impl Into<String>) -> Self {
        Self {
            kind,
            name: name.into(),
        }
    }

    /// Converts and checks a protobuf reference; `field` is its path.
    pub fn from_pb(r: &pb::ResourceRef, field: &str) -> Result<Self, Invalid> {
        let mut v = Violations::new();
        let kind = Kind::from_pb(r.kind);
        if kind.is_none() {
            v.push(
                join(field, "kind"),
                format_args!("must be one of KIND_SERVICE, KIND_ENDPOINT, KIND_ROUTE or KIND_LISTENER, not {}", r.kind),
            );
        }
        check::name(&mut v, &join(field, "name"), &r.name);
        v.finish(())?;
        Ok(Ref::new(kind.expect("checked above"), r.name.clone()))
    }

    /// The protobuf form.
    pub fn to_pb(&self) -> pb::ResourceRef {
        pb::ResourceRef {
            kind: self.kind.to_pb() as i32,
            name: self.name.clone(),
        }
    }
}

impl fmt::Display for Ref {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.kind, self.name)
    }
}

/// The wire protocol of a service or listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1.1.
    Http,
    /// HTTP/2.
    Http2,
    /// gRPC over HTTP/2.
    Grpc,
    /// Opaque TCP.
    Tcp,
}

impl Protocol {
    fn from_pb(v: &mut Violations, field: &str, value: i32) -> Protocol {
        match pb::Protocol::try_from(value) {
            Ok(pb::Protocol::Unspecified | pb::Protocol::Http) => Protocol::Http,
            Ok(pb::Protocol::Http2) => Protocol::Http2,
            Ok(pb::Protocol::Grpc) => Protocol::Grpc,
            Ok(pb::Protocol::Tcp) => Protocol::Tcp,
            Err(_) => {
                v.push(
                    field,
                    format_args!("must be a known protocol (0 to 4), not {value}"),
                );
                Protocol::Http
            }
        }
    }
}

/// What a consistent-hashing policy hashes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HashOn {
    /// A request header (lowercase name).
    Header(String),
    /// A cookie.
    Cookie(String),
    /// The client's IP address.
    SourceIp,
}

/// A service's load-balancing policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Smooth weighted round robin.
    RoundRobin,
    /// Power of two choices on in-flight requests.
    LeastRequest,
    /// Weighted random.
    Random,
    /// Consistent hashing on a ring.
    RingHash(HashOn),
    /// Maglev consistent hashing.
    Maglev(HashOn),
}

/// An active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// Time between two checks of one endpoint.
    pub interval: Duration,
    /// How long one check may take.
    pub timeout: Duration,
    /// Consecutive successes before healthy.
    pub healthy_threshold: u32,
    /// Consecutive failures before unhealthy.
    pub unhealthy_threshold: u32,
    /// The check itself.
    pub check: Check,
}

/// The kind of an active health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// An HTTP GET.
    Http {
        /// Request path.
        path: String,
        /// Host header, if not the endpoint's address.
        host: Option<String>,
        /// Passing statuses.
        status: std::ops::RangeInclusive<u16>,
        /// A substring the body must contain.
        body: Option<String>,
    },
    /// A TCP connect.
    Tcp,
    /// `grpc.health.v1.Health/Check`.
    Grpc {
        /// The service name sent in the request.
        service: String,
    },
}

/// Passive outlier detection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutlierDetection {
    /// Consecutive 5xx that eject; 0 disables.
    pub consecutive_5xx: u32,
    /// Consecutive connect failures that eject; 0 disables.
    pub consecutive_connect_failures: u32,
    /// First ejection time.
    pub base_ejection_time: Duration,
    /// Longest ejection time.
    pub max_ejection_time: Duration,
    /// Most endpoints ejected at once, as a percentage.
    pub max_ejection_percent: u8,
}

/// Circuit-breaker limits; `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CircuitBreaker {
    /// Open connections.
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    pub max_requests: Option<u32>,
    /// Retries in flight.
    pub max_retries: Option<u32>,
}

/// A logical destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Unique name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Revision of the write that last touched it.
    pub revision: u64,
    /// Wire protocol.
    pub protocol: Protocol,
    /// Load-balancing policy.
    pub balance: Balance,
    /// Active health check, if any.
    pub health_check: Option<HealthCheck>,
    /// Passive outlier detection, if any.
    pub outlier_detection: Option<OutlierDetection>,
    /// Circuit-breaker limits.
    pub circuit_breaker: CircuitBreaker,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// Below this share of healthy endpoints, route to all.
    pub panic_threshold_percent: u8,
    /// How long an idle keep-alive connection to an endpoint is kept.
    pub idle_timeout: Duration,
    /// The node selector of the nodes whose DNS answers for it beside
    /// those whose listeners reach it; `None`: only those.
    pub dns: Option<Labels>,
}

/// Health of an endpoint, as reported by its node's agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Health {
    /// Not reported, or the node's lease expired. Routable.
    #[default]
    Unknown,
    /// Passing its checks.
    Healthy,
    /// Failing its checks; receives no traffic.
    Unhealthy,
    /// Receives no new requests.
    Draining,
}

impl Health {
    /// Converts the protobuf value; unknown numbers become `Unknown`.
    pub fn from_pb(value: i32) -> Health {
        match pb::Health::try_from(value) {
            Ok(pb::Health::Healthy) => Health::Healthy,
            Ok(pb::Health::Unhealthy) => Health::Unhealthy,
            Ok(pb::Health::Draining) => Health::Draining,
            _ => Health::Unknown,
        }
    }
}

/// One instance of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Unique name.
    pub name: String,
    /// Labels (for subsets).
    pub labels: Labels,
    /// Revision of the write that last touched it.
    pub revision: u64,
    /// The owning service.
    pub service: String,
    /// IP address or host name.
    pub address: String,
    /// Port.
    pub port: u16,
    /// Balancing weight.
    pub weight: u32,
    /// The node whose agent checks it.
    pub node: Option<String>,
    /// Locality.
    pub zone: Option<String>,
    /// Overrides the service's health check.
    pub health_check: Option<HealthCheck>,
    /// Reported health.
    pub health: Health,
}

/// Matches a request path.
#[derive(Debug, Clone)]
pub enum PathMatch {
    /// Whole path equals.
    Exact(String),
    /// Path starts with.
    Prefix(String),
    /// Whole path matches.
    Regex(regex::Regex),
}

/// Matches a header or query value.
#[derive(Debug, Clone)]
pub enum StringMatch {
    /// Equals.
    Exact(String),
    /// Starts with.
    Prefix(String),
    /// Whole value matches.
    Regex(regex::Regex),
    /// Present with any value.
    Present,
}

/// Matches one header.
#[derive(Debug, Clone)]
pub struct HeaderMatch {
    /// Lowercase header name.
    pub name: String,
    /// What the value must be.
    pub value: StringMatch,
    /// Match when the header does not match.
    pub invert: bool,
}

/// Matches one query parameter.
#[derive(Debug, Clone)]
pub struct QueryMatch {
    /// Parameter name.
    pub name: String,
    /// What the value must be.
    pub value: StringMatch,
}

/// Matches a request host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostMatch {
    /// Exactly this host (lowercase).
    Exact(String),
    /// Any subdomain of this suffix, e.g. `.example.com` for `*.example.com`.
    Suffix(String),
}

/// One match: all of its parts must hold.
#[derive(Debug, Clone, Default)]
pub struct RouteMatch {
    /// Host, if constrained.
    pub host: Option<HostMatch>,
    /// Path, if constrained.
    pub path: Option<PathMatch>,
    /// Method (upper case), if constrained.
    pub method: Option<String>,
    /// Header matches.
    pub headers: Vec<HeaderMatch>,
    /// Query matches.
    pub query_params: Vec<QueryMatch>,
}

/// One destination with its weight.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// Target service.
    pub service: String,
    /// Relative weight.
    pub weight: u32,
    /// Required endpoint labels.
    pub subset: Labels,
}

/// When to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryOn {
    /// Connect failure.
    ConnectFailure,
    /// Reset before a response.
    Reset,
    /// 502, 503, 504.
    GatewayError,
    /// Any 5xx.
    ServerError,
    /// One of the listed statuses.
    RetriableStatus,
}

/// Retry policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first try.
    pub attempts: u32,
    /// Timeout of one try.
    pub per_try_timeout: Option<Duration>,
    /// Conditions.
    pub retry_on: Vec<RetryOn>,
    /// Statuses for [`RetryOn::RetriableStatus`].
    pub retriable_status_codes: Vec<u16>,
    /// First backoff.
    pub backoff_base: Duration,
    /// Longest backoff.
    pub backoff_max: Duration,
    /// Retry budget, percent of requests.
    pub budget_percent: u8,
}

/// Header edits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRewrite {
    /// Replace.
    pub set: Labels,
    /// Append.
    pub add: Labels,
    /// Remove (lowercase names).
    pub remove: Vec<String>,
}

/// What a matching rule does.
#[derive(Debug, Clone)]
pub struct RouteAction {
    /// Weighted destinations.
    pub destinations: Vec<Destination>,
    /// Overall timeout; `None` for none.
    pub timeout: Option<Duration>,
    /// Retry policy, if any.
    pub retry: Option<RetryPolicy>,
    /// Replacement for a matched prefix.
    pub prefix_rewrite: Option<String>,
    /// Request header edits.
    pub request_headers: HeaderRewrite,
    /// Response header edits.
    pub response_headers: HeaderRewrite,
    /// Protocols a client may switch to (`Upgrade`) through the proxy,
    /// lowercase; by default `websocket`.
    pub upgrades: Vec<String>,
}

/// One rule of a route.
#[derive(Debug, Clone)]
pub struct RouteRule {
    /// Any of these must match; empty matches everything.
    pub matches: Vec<RouteMatch>,
    /// What to do.
    pub action: RouteAction,
}

/// Ordered HTTP rules.
#[derive(Debug, Clone)]
pub struct Route {
    /// Unique name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Revision of the write that last touched it.
    pub revision: u64,
    /// Rules, first match wins.
    pub rules: Vec<RouteRule>,
}

/// What a listener forwards to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenerTarget {
    /// An HTTP route.
    Route(String),
    /// A TCP service.
    Service(String),
}

/// A socket a node's proxy opens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listener {
    /// Unique name.
    pub name: String,
    /// Labels.
    pub labels: Labels,
    /// Revision of the write that last touched it.
    pub revision: u64,
    /// Bind address.
    pub address: IpAddr,
    /// Bind port.
    pub port: u16,
    /// Accepted protocol.
    pub protocol: Protocol,
    /// What is behind it.
    pub target: ListenerTarget,
    /// Nodes that open it.
    pub node_selector: Labels,
}

/// Any one operator-managed resource.
#[derive(Debug, Clone)]
pub enum Resource {
    /// A service.
    Service(Service),
    /// An endpoint.
    Endpoint(Endpoint),
    /// A route.
    Route(Route),
    /// A listener.
    Listener(Listener),
}

impl Resource {
    /// Converts and validates a protobuf resource. `field` is the path of the
    /// resource in the request (e.g. `items[2]`), used to name problems.
    pub fn from_pb(r: &pb::Resource, field: &str) -> Result<Resource, Invalid> {
        use pb::resource::Kind as K;
        match &r.kind {
            Some(K::Service(s)) => Service::from_pb(s, &join(field, "service")).map(Self::Service),
            Some(K::Endpoint(e)) => {
                Endpoint::from_pb(e, &join(field, "endpoint")).map(Self::Endpoint)
            }
            Some(K::Route(r)) => Route::from_pb(r, &join(field, "route")).map(Self::Route),
            Some(K::Listener(l)) => {
                Listener::from_pb(l, &join(field, "listener")).map(Self::Listener)
            }
            None => Err(Invalid::one(
                field,
                "must hold a service, endpoint, route or listener",
            )),
        }
    }

    /// The resource's kind.
    pub fn kind(&self) -> Kind {
        match self {
            Resource::Service(_) => Kind::Service,
            Resource::Endpoint(_) => Kind::Endpoint,
            Resource::Route(_) => Kind::Route,
            Resource::Listener(_) => Kind::Listener,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        match self {
            Resource::Service(s) => &s.name,
            Resource::Endpoint(e) => &e.name,
            Resource::Route(r) => &r.name,
            Resource::Listener(l) => &l.name,
        }
    }

    /// The resource's labels.
    pub fn labels(&self) -> &Labels {
        match self {
            Resource::Service(s) => &s.labels,
            Resource::Endpoint(e) => &e.labels,
            Resource::Route(r) => &r.labels,
            Resource::Listener(l) => &l.labels,
        }
    }

    /// Kind and name.
    pub fn reference(&self) -> Ref {
        Ref::new(self.kind(), self.name())
    }

    /// The other resources this one names and that must exist, each with the
    /// path of the first field (relative to the resource) that names it.
    /// Sorted by reference, without repeats.
    pub fn references(&self) -> Vec<(Ref, String)> {
        let mut out = match self {
            Resource::Service(_) => vec![],
            Resource::Endpoint(e) => vec![(Ref::new(Kind::Service, &e.service), "service".into())],
            Resource::Route(r) => r
                .rules
                .iter()
                .enumerate()
                .flat_map(|(i, rule)| {
                    rule.action
                        .destinations
                        .iter()
                        .enumerate()
                        .map(move |(j, d)| {
                            (
                                Ref::new(Kind::Service, &d.service),
                                format!("rules[{i}].action.destinations[{j}].service"),
                            )
                        })
                })
                .collect(),
            Resource::Listener(l) => vec![match &l.target {
                ListenerTarget::Route(r) => (Ref::new(Kind::Route, r), "route".into()),
                ListenerTarget::Service(s) => (Ref::new(Kind::Service, s), "service".into()),
            }],
        };
        // Stable sort keeps the first field naming each reference.
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out.dedup_by(|a, b| a.0 == b.0);
        out
    }
}

/// The kind and name of a protobuf resource, without validating it.
pub fn pb_ref(r: &pb::Resource) -> Option<Ref> {
    use pb::resource::Kind as K;
    Some(match r.kind.as_ref()? {
        K::Service(s) => Ref::new(Kind::Service, &s.name),
        K::Endpoint(e) => Ref::new(Kind::Endpoint, &e.name),
        K::Route(r) => Ref::new(Kind::Route, &r.name),
        K::Listener(l) => Ref::new(Kind::Listener, &l.name),
    })
}

/// The resources a protobuf resource names, without validating it, each
/// with the path of the first field (relative to the resource) that names
/// it, as [`Resource::references`] gives them for a valid one. Names that
/// are not valid names are left out: they are field problems, not
/// references.
pub fn pb_references(r: &pb::Resource) -> Vec<(Ref, String)> {
    use pb::resource::Kind as K;
    let valid = |name: &str| {
        let mut v = Violations::new();
        check::name(&mut v, "", name);
        v.is_empty()
    };
    let mut out = match r.kind.as_ref() {
        None | Some(K::Service(_)) => vec![],
        Some(K::Endpoint(e)) => vec![(Ref::new(Kind::Service, &e.service), "service".into())],
        Some(K::Route(route)) => route
            .rules
            .iter()
            .take(check::MAX_RULES)
            .enumerate()
            .flat_map(|(i, rule)| {
                rule.action
                    .iter()
                    .flat_map(|a| a.destinations.iter().take(check::MAX_DESTINATIONS))
                    .enumerate()
                    .map(move |(j, d)| {
                        (
                            Ref::new(Kind::Service, &d.service),
                            format!("rules[{i}].action.destinations[{j}].service"),
                        )
                    })
            })
            .collect(),
        Some(K::Listener(l)) => match &l.target {
            None => vec![],
            Some(pb::listener::Target::Route(name)) => {
                vec![(Ref::new(Kind::Route, name), "route".into())]
            }
            Some(pb::listener::Target::Service(name)) => {
                vec![(Ref::new(Kind::Service, name), "service".into())]
            }
        },
    };
    out.retain(|(target, _)| valid(&target.name));
    // Stable sort keeps the first field naming each reference.
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// The labels of a protobuf resource, without validating it.
pub fn pb_labels(r: &pb::Resource) -> Option<&Labels> {
    use pb::resource::Kind as K;
    Some(match r.kind.as_ref()? {
        K::Service(s) => &s.labels,
        K::Endpoint(e) => &e.labels,
        K::Route(r) => &r.labels,
        K::Listener(l) => &l.labels,
    })
}

/// The store-managed `revision` field of a protobuf resource.
pub fn pb_revision(r: &pb::Resource) -> u64 {
    use pb::resource::Kind as K;
    match &r.kind {
        Some(K::Service(s)) => s.revision,
        Some(K::Endpoint(e)) => e.revision,
        Some(K::Route(r)) => r.revision,
        Some(K::Listener(l)) => l.revision,
        None => 0,
    }
}

/// A Snapshot at `revision` holding `resources`, each in its kind's list.
pub fn pb_snapshot<'a>(
    revision: u64,
    resources: impl IntoIterator<Item = &'a pb::Resource>,
) -> pb::Snapshot {
    use pb::resource::Kind as K;
    let mut s = pb::Snapshot {
        revision,
        ..pb::Snapshot::default()
    };
    for r in resources {
        match r.kind.clone() {
            Some(K::Service(x)) => s.services.push(x),
            Some(K::Endpoint(x)) => s.endpoints.push(x),
            Some(K::Route(x)) => s.routes.push(x),
            Some(K::Listener(x)) => s.listeners.push(x),
            None => {}
        }
    }
    s
}

/// Sets the store-managed `revision` field of a protobuf resource.
pub fn set_pb_revision(r: &mut pb::Resource, revision: u64) {
    use pb::resource::Kind as K;
    match &mut r.kind {
        Some(K::Service(s)) => s.revision = revision,
        Some(K::Endpoint(e)) => e.revision = revision,
        Some(K::Route(r)) => r.revision = revision,
        Some(K::Listener(l)) => l.revision = revision,
        None => {}
    }
}

/// Clears every output-only field (revision, endpoint health), leaving what
/// an operator declares.
pub fn clear_pb_output(r: &mut pb::Resource) {
    set_pb_revision(r, 0);
    if let Some(pb::resource::Kind::Endpoint(e)) = &mut r.kind {
        e.health = 0;
        e.health_changed_at = None;
        e.health_reason.clear();
    }
}

fn common(v: &mut Violations, field: &str, name: &str, labels: &Labels) -> (String, Labels) {
    check::name(v, &join(field, "name"), name);
    check::labels(v, &join(field, "labels"), labels.iter());
    (name.to_owned(), labels.clone())
}

const MS: Duration = Duration::from_millis(1);
const HOUR: Duration = Duration::from_secs(3600);

impl HealthCheck {
    fn from_pb(v: &mut Violations, field: &str, h: &pb::HealthCheck) -> HealthCheck {
        let interval = check::duration(
            v,
            &join(field, "interval"),
            h.interval.as_ref(),
            Duration::from_secs(5),
            50 * MS,
            HOUR,
        );
        let timeout = check::duration(
            v,
            &join(field, "timeout"),
            h.timeout.as_ref(),
            Duration::from_secs(1).min(interval),
            MS,
            HOUR,
        );
        if timeout > interval {
            v.push(
                join(field, "timeout"),
                format_args!(
                    "must not exceed the interval ({}), not {}",
                    check::human(interval),
                    check::human(timeout)
                ),
            );
        }
        let healthy_threshold = check::in_range(
            v,
            &join(field, "healthy_threshold"),
            h.healthy_threshold,
            2,
            1,
            100,
        );
        let unhealthy_threshold = check::in_range(
            v,
            &join(field, "unhealthy_threshold"),
            h.unhealthy_threshold,
            3,
            1,
            100,
        );
        use pb::health_check::Check as C;
        let check = match &h.check {
            None => {
                v.push(join(field, "check"), "must set one of http, tcp or grpc");
                Check::Tcp
            }
            Some(C::Tcp(_)) => Check::Tcp,
            Some(C::Grpc(g)) => {
                check::text(v, &join(field, "grpc.service_name"), &g.service_name);
                Check::Grpc {
                    service: g.service_name.clone(),
                }
            }
            Some(C::Http(http)) => {
                let at = join(field, "http");
                let path = if http.path.is_empty() {
                    "/"
                } else {
                    &http.path
                };
                if !path.starts_with('/') {
                    v.push(join(&at, "path"), "must start with '/'");
                }
                check::text(v, &join(&at, "path"), path);
                if !http.host.is_empty() {
                    check::host(v, &join(&at, "host"), &http.host);
                }
                let lo = check::in_range(
                    v,
                    &join(&at, "expected_status_min"),
                    http.expected_status_min,
                    200,
                    100,
                    599,
                );
                let hi = check::in_range(
                    v,
                    &join(&at, "expected_status_max"),
                    http.expected_status_max,
                    399,
                    100,
                    599,
                );
                if lo > hi {
                    v.push(
                        join(&at, "expected_status_max"),
                        format_args!("must not be below expected_status_min ({lo}), not {hi}"),
                    );
                }
                check::text(v, &join(&at, "expected_body"), &http.expected_body);
                Check::Http {
                    path: path.to_owned(),
                    host: (!http.host.is_empty()).then(|| http.host.clone()),
                    status: lo as u16..=hi as u16,
                    body: (!http.expected_body.is_empty()).then(|| http.expected_body.clone()),
                }
            }
        };
        HealthCheck {
            interval,
            timeout,
            healthy_threshold,
            unhealthy_threshold,
            check,
        }
    }
}

fn hash_on(v: &mut Violations, field: &str, h: Option<&pb::HashPolicy>) -> HashOn {
    use pb::hash_policy::Source as S;
    match h.and_then(|h| h.source.as_ref()) {
        None => {
            v.push(
                field,
                "must be set for ring_hash and maglev: set header, cookie or source_ip",
            );
            HashOn::SourceIp
        }
        Some(S::Header(name)) => {
            check::header_name(v, &join(field, "header"), name);
            HashOn::Header(name.to_ascii_lowercase())
        }
        Some(S::Cookie(name)) => {
            if name.is_empty() {
                v.push(join(field, "cookie"), "must not be empty");
            } else if name.len() > 256 {
                v.push(
                    join(field, "cookie"),
                    format_args!("must be at most 256 characters long, not {}", name.len()),
                );
            } else if name.contains([';', '=', ' ', ',']) || name.chars().any(char::is_control) {
                v.push(
                    join(field, "cookie"),
                    format_args!(
                        "{} is not a valid cookie name: no ';', '=', ',', spaces or control characters",
                        check::quote(name)
                    ),
                );
            }
            HashOn::Cookie(name.clone())
        }
        Some(S::SourceIp(true)) => HashOn::SourceIp,
        Some(S::SourceIp(false)) => {
            v.push(join(field, "source_ip"), "must be true when chosen");
            HashOn::SourceIp
        }
    }
}

/// Checks a percentage; `default` replaces 0 when the field has one (proto3
/// cannot tell unset from 0), and the message then says so.
fn percent(v: &mut Violations, field: &str, value: u32, default: Option<u8>) -> u8 {
    match default {
        Some(default) if value == 0 => default,
        Some(default) if value > 100 => {
            v.push(
                field,
                format_args!("must be in 1..100 (0 or unset means {default}), not {value}"),
            );
            default
        }
        None if value > 100 => {
            v.push(field, format_args!("must be in 0..100, not {value}"));
            100
        }
        _ => value as u8,
    }
}

impl Service {
    /// Converts and validates; `field` is the service's path in the request.
    pub fn from_pb(s: &pb::Service, field: &str) -> Result<Service, Invalid> {
        let mut v = Violations::new();
        let (name, labels) = common(&mut v, field, &s.name, &s.labels);
        let protocol = Protocol::from_pb(&mut v, &join(field, "protocol"), s.protocol);
        let hash_field = join(field, "hash_policy");
        let balance = match pb::LbPolicy::try_from(s.lb_policy) {
            Ok(pb::LbPolicy::Unspecified | pb::LbPolicy::RoundRobin) => Balance::RoundRobin,
            Ok(pb::LbPolicy::LeastRequest) => Balance::LeastRequest,
            Ok(pb::LbPolicy::Random) => Balance::Random,
            Ok(pb::LbPolicy::RingHash) => {
                Balance::RingHash(hash_on(&mut v, &hash_field, s.hash_policy.as_ref()))
            }
            Ok(pb::LbPolicy::Maglev) => {
                Balance::Maglev(hash_on(&mut v, &hash_field, s.hash_policy.as_ref()))
            }
            Err(_) => {
                v.push(
                    join(field, "lb_policy"),
                    format_args!("must be a known policy (0 to 5), not {}", s.lb_policy),
                );
                Balance::RoundRobin
            }
        };
        if s.hash_policy.is_some() && !matches!(balance, Balance::RingHash(_) | Balance::Maglev(_))
        {
            v.push(
                hash_field,
                "must not be set unless lb_policy is ring_hash or maglev",
            );
        }
        if protocol == Protocol::Tcp
            && matches!(
                balance,
                Balance::RingHash(HashOn::Header(_) | HashOn::Cookie(_))
                    | Balance::Maglev(HashOn::Header(_) | HashOn::Cookie(_))
            )
        {
            v.push(
                join(field, "hash_policy"),
                "a tcp service can only hash on source_ip",
            );
        }
        let health_check = s
            .health_check
            .as_ref()
            .map(|h| HealthCheck::from_pb(&mut v, &join(field, "health_check"), h));
        let outlier_detection = s.outlier_detection.as_ref().map(|o| {
            let at = join(field, "outlier_detection");
            let base = check::duration(
                &mut v,
                &join(&at, "base_ejection_time"),
                o.base_ejection_time.as_ref(),
                Duration::from_secs(30),
                MS,
                HOUR,
            );
            let max = check::duration(
                &mut v,
                &join(&at, "max_ejection_time"),
                o.max_ejection_time.as_ref(),
                Duration::from_secs(300).max(base),
                MS,
                HOUR,
            );
            if max < base {
                v.push(
                    join(&at, "max_ejection_time"),
                    "must not be below base_ejection_time",
                );
            }
            OutlierDetection {
                consecutive_5xx: o.consecutive_5xx,
                consecutive_connect_failures: o.consecutive_connect_failures,
                base_ejection_time: base,
                max_ejection_time: max,
                max_ejection_percent: percent(
                    &mut v,
                    &join(&at, "max_ejection_percent"),
                    o.max_ejection_percent,
                    Some(10),
                ),
            }
        });
        let limit = |n: u32| (n != 0).then_some(n);
        let cb = s.circuit_breaker.unwrap_or_default();
        let connect_timeout = check::duration(
            &mut v,
            &join(field, "connect_timeout"),
            s.connect_timeout.as_ref(),
            Duration::from_secs(1),
            MS,
            Duration::from_secs(60),
        );
        let idle_timeout = check::duration(
            &mut v,
            &join(field, "idle_timeout"),
            s.idle_timeout.as_ref(),
            Duration::from_secs(60),
            MS,
            Duration::from_secs(3600),
        );
        let panic_threshold_percent = match s.panic_threshold_percent {
            None => 50,
            Some(p) => percent(&mut v, &join(field, "panic_threshold_percent"), p, None),
        };
        let dns = s.dns.as_ref().map(|d| {
            check::labels(
                &mut v,
                &join(field, "dns.node_selector"),
                d.node_selector.iter(),
            );
            d.node_selector.clone()
        });
        v.finish(Service {
            name,
            labels,
            revision: s.revision,
            protocol,
            balance,
            health_check,
            outlier_detection,
            circuit_breaker: CircuitBreaker {
                max_connections: limit(cb.max_connections),
                max_pending_requests: limit(cb.max_pending_requests),
                max_requests: limit(cb.max_requests),
                max_retries: limit(cb.max_retries),
            },
            connect_timeout,
            panic_threshold_percent,
            idle_timeout,
            dns,
        })
    }
}

impl Endpoint {
    /// Converts and validates; `field` is the endpoint's path in the request.
    pub fn from_pb(e: &pb::Endpoint, field: &str) -> Result<Endpoint, Invalid> {
        let mut v = Violations::new();
        let (name, labels) = common(&mut v, field, &e.name, &e.labels);
        check::reference(&mut v, &join(field, "service"), &e.service);
        check::host(&mut v, &join(field, "address"), &e.address);
        let port = check::port(&mut v, &join(field, "port"), e.port);
        let weight = check::in_range(
            &mut v,
            &join(field, "weight"),
            e.weight,
            1,
            1,
            check::MAX_WEIGHT,
        );
        let node = (!e.node.is_empty()).then(|| {
            check::name(&mut v, &join(field, "node"), &e.node);
            e.node.clone()
        });
        let zone = (!e.zone.is_empty()).then(|| {
            check::text(&mut v, &join(field, "zone"), &e.zone);
            e.zone.clone()
        });
        let health_check = e
            .health_check
            .as_ref()
            .map(|h| HealthCheck::from_pb(&mut v, &join(field, "health_check"), h));
        v.finish(Endpoint {
            name,
            labels,
            revision: e.revision,
            service: e.service.clone(),
            address: e.address.clone(),
            port,
            weight,
            node,
            zone,
            health_check,
            health: Health::from_pb(e.health),
        })
    }
}

fn string_match(v: &mut Violations, field: &str, m: Option<&pb::StringMatch>) -> StringMatch {
    use pb::string_match::Kind as K;
    match m.and_then(|m| m.kind.as_ref()) {
        None => {
            v.push(field, "must set one of exact, prefix, regex or present");
            StringMatch::Present
        }
        Some(K::Exact(s)) => {
            check::text(v, &join(field, "exact"), s);
            StringMatch::Exact(s.clone())
        }
        Some(K::Prefix(s)) => {
            check::text(v, &join(field, "prefix"), s);
            StringMatch::Prefix(s.clone())
        }
        Some(K::Regex(s)) => check::regex(v, &join(field, "regex"), s)
            .map(StringMatch::Regex)
            .unwrap_or(StringMatch::Present),
        Some(K::Present(true)) => StringMatch::Present,
        Some(K::Present(false)) => {
            v.push(
                join(field, "present"),
                "must be true when chosen (use invert to require absence)",
            );
            StringMatch::Present
        }
    }
}

fn route_match(v: &mut Violations, field: &str, m: &pb::RouteMatch) -> RouteMatch {
    let host = (!m.host.is_empty()).then(|| {
        let at = join(field, "host");
        let host = m.host.to_ascii_lowercase();
        match host.strip_prefix("*.") {
            Some(suffix) => {
                check::host(v, &at, suffix);
                HostMatch::Suffix(format!(".{suffix}"))
            }
            None => {
                check::host(v, &at, &host);
                HostMatch::Exact(host)
            }
        }
    });
    use pb::path_match::Kind as P;
    let path = m.path.as_ref().map(|p| {
        let at = join(field, "path");
        match &p.kind {
            None => {
                v.push(&at, "must set one of exact, prefix or regex");
                PathMatch::Prefix("/".into())
            }
            Some(P::Exact(s)) | Some(P::Prefix(s)) if !s.starts_with('/') => {
                let which = if matches!(p.kind, Some(P::Exact(_))) {
                    "exact"
                } else {
                    "prefix"
                };
                v.push(
                    join(&at, which),
                    format_args!("must start with '/', not {}", check::quote(s)),
                );
                PathMatch::Prefix("/".into())
            }
            Some(P::Exact(s)) => {
                check::text(v, &join(&at, "exact"), s);
                PathMatch::Exact(s.clone())
            }
            Some(P::Prefix(s)) => {
                check::text(v, &join(&at, "prefix"), s);
                PathMatch::Prefix(s.clone())
            }
            Some(P::Regex(s)) => check::regex(v, &join(&at, "regex"), s)
                .map(PathMatch::Regex)
                .unwrap_or(PathMatch::Prefix("/".into())),
        }
    });
    let method = (!m.method.is_empty()).then(|| {
        if !m.method.chars().all(|c| c.is_ascii_uppercase()) || m.method.len() > 32 {
            v.push(
                join(field, "method"),
                format_args!(
                    "{} is not an HTTP method: use at most 32 upper-case letters (GET, POST, ...)",
                    check::quote(&m.method)
                ),
            );
        }
        m.method.clone()
    });
    check::count(
        v,
        &join(field, "headers"),
        m.headers.len(),
        check::MAX_FIELD_MATCHES,
    );
    let headers = m
        .headers
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let at = format!("{field}.headers[{i}]");
            check::header_name(v, &join(&at, "name"), &h.name);
            HeaderMatch {
                name: h.name.to_ascii_lowercase(),
                value: string_match(v, &join(&at, "value"), h.value.as_ref()),
                invert: h.invert,
            }
        })
        .collect();
    check::count(
        v,
        &join(field, "query_params"),
        m.query_params.len(),
        check::MAX_FIELD_MATCHES,
    );
    let query_params = m
        .query_params
        .iter()
        .enumerate()
        .map(|(i, q)| {
            let at = format!("{field}.query_params[{i}]");
            if q.name.is_empty() {
                v.push(join(&at, "name"), "must not be empty");
            }
            check::text(v, &join(&at, "name"), &q.name);
            QueryMatch {
                name: q.name.clone(),
                value: string_match(v, &join(&at, "value"), q.value.as_ref()),
            }
        })
        .collect();
    RouteMatch {
        host,
        path,
        method,
        headers,
        query_params,
    }
}

fn header_rewrite(v: &mut Violations, field: &str, h: Option<&pb::HeaderRewrite>) -> HeaderRewrite {
    let Some(h) = h else {
        return HeaderRewrite::default();
    };
    let lower = |m: &Labels, at: &str, v: &mut Violations| -> Labels {
        check::count(v, at, m.len(), check::MAX_LABELS);
        m.iter()
            .map(|(k, val)| {
                let entry = check::entry(at, k);
                check::header_name(v, &entry, k);
                check::text(v, &entry, val);
                (k.to_ascii_lowercase(), val.clone())
            })
            .collect()
    };
    let set = lower(&h.set, &join(field, "set"), v);
    let add = lower(&h.add, &join(field, "add"), v);
    let remove = h
        .remove
        .iter()
        .enumerate()
        .map(|(i, name)| {
            check::header_name(v, &format!("{field}.remove[{i}]"), name);
            name.to_ascii_lowercase()
        })
        .collect();
    HeaderRewrite { set, add, remove }
}

/// Most protocols one rule's `upgrades.allow` lists.
const MAX_UPGRADES: usize = 16;

/// Longest protocol name in `upgrades.allow`.
const MAX_UPGRADE_LEN: usize = 64;

/// The protocols a rule lets clients switch to: WebSocket when `u` is
/// unset, as Envoy does; lowercase.
fn upgrades(v: &mut Violations, field: &str, u: Option<&pb::Upgrades>) -> Vec<String> {
    let Some(u) = u else {
        return vec!["websocket".to_owned()];
    };
    let field = join(field, "allow");
    check::count(v, &field, u.allow.len(), MAX_UPGRADES);
    u.allow
        .iter()
        .enumerate()
        .map(|(i, name)| {
            let at = format!("{field}[{i}]");
            if name.is_empty() {
                v.push(at, "must not be empty");
            } else if name.len() > MAX_UPGRADE_LEN {
                v.push(
                    at,
                    format_args!(
                        "a protocol name must be at most {MAX_UPGRADE_LEN} characters long, not {}",
                        name.len()
                    ),
                );
            } else if !check::is_token(name) {
                v.push(
                    at,
                    format_args!(
                        "{} is not a protocol name: use letters, digits and !#$%&'*+-.^_`|~ \
                         (no version)",
                        check::quote(name)
                    ),
                );
            } else if name.eq_ignore_ascii_case("h2c") {
                v.push(
                    at,
                    "h2c is never relayed: HTTP/2 cleartext is set up with prior knowledge, \
                     which HTTP listeners accept, not by upgrade",
                );
            }
            name.to_ascii_lowercase()
        })
        .collect()
}

fn retry_policy(v: &mut Violations, field: &str, r: &pb::RetryPolicy) -> RetryPolicy {
    check::within(v, &join(field, "attempts"), r.attempts, 0, 10);
    let mut retry_on = Vec::new();
    for (i, on) in r.retry_on.iter().enumerate() {
        let at = format!("{field}.retry_on[{i}]");
        match pb::RetryOn::try_from(*on) {
            Ok(pb::RetryOn::ConnectFailure) => retry_on.push(RetryOn::ConnectFailure),
            Ok(pb::RetryOn::Reset) => retry_on.push(RetryOn::Reset),
            Ok(pb::RetryOn::GatewayError) => retry_on.push(RetryOn::GatewayError),
            Ok(pb::RetryOn::RetryOn5xx) => retry_on.push(RetryOn::ServerError),
            Ok(pb::RetryOn::RetriableStatus) => retry_on.push(RetryOn::RetriableStatus),
            Ok(pb::RetryOn::Unspecified) | Err(_) => v.push(
                at,
                format_args!("must be a known retry condition (1 to 5), not {on}"),
            ),
        }
    }
    if r.attempts > 0 && r.retry_on.is_empty() {
        v.push(
            join(field, "retry_on"),
            "must have at least one condition when attempts > 0",
        );
    }
    let retriable_status_codes = r
        .retriable_status_codes
        .iter()
        .enumerate()
        .map(|(i, &code)| {
            if !(100..=599).contains(&code) {
                v.push(
                    format!("{field}.retriable_status_codes[{i}]"),
                    format_args!("must be an HTTP status in 100..599, not {code}"),
                );
            }
            code as u16
        })
        .collect::<Vec<_>>();
    if retry_on.contains(&RetryOn::RetriableStatus) && retriable_status_codes.is_empty() {
        v.push(
            join(field, "retriable_status_codes"),
            "required with retry_on RETRY_ON_RETRIABLE_STATUS",
        );
    }
    let per_try_timeout = r
        .per_try_timeout
        .as_ref()
        .map(|d| check::duration(v, &join(field, "per_try_timeout"), Some(d), MS, MS, HOUR));
    let backoff_base = check::duration(
        v,
        &join(field, "backoff_base"),
        r.backoff_base.as_ref(),
        25 * MS,
        MS,
        Duration::from_secs(60),
    );
    let backoff_max = check::duration(
        v,
        &join(field, "backoff_max"),
        r.backoff_max.as_ref(),
        (250 * MS).max(backoff_base),
        MS,
        Duration::from_secs(300),
    );
    if backoff_max < backoff_base {
        v.push(join(field, "backoff_max"), "must not be below backoff_base");
    }
    let budget_percent = percent(
        v,
        &join(field, "budget_percent"),
        r.budget_percent,
        Some(20),
    );
    RetryPolicy {
        attempts: r.attempts,
        per_try_timeout,
        retry_on,
        retriable_status_codes,
        backoff_base,
        backoff_max,
        budget_percent,
    }
}

fn route_action(v: &mut Violations, field: &str, a: Option<&pb::RouteAction>) -> RouteAction {
    let default = pb::RouteAction::default();
    let a = a.unwrap_or_else(|| {
        v.push(field, "must be set");
        &default
    });
    if a.destinations.is_empty() {
        v.push(
            join(field, "destinations"),
            "must have at least one destination",
        );
    } else {
        check::count(
            v,
            &join(field, "destinations"),
            a.destinations.len(),
            check::MAX_DESTINATIONS,
        );
    }
    let destinations: Vec<Destination> = a
        .destinations
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let at = format!("{field}.destinations[{i}]");
            check::reference(v, &join(&at, "service"), &d.service);
            check::within(v, &join(&at, "weight"), d.weight, 0, check::MAX_WEIGHT);
            check::labels(v, &join(&at, "subset"), d.subset.iter());
            Destination {
                service: d.service.clone(),
                // A lone destination with weight 0 would send nothing; an
                // unset weight means 1 unless another destination sets one.
                weight: d.weight,
                subset: d.subset.clone(),
            }
        })
        .collect();
    let all_unset = destinations.iter().all(|d| d.weight == 0);
    let destinations = destinations
        .into_iter()
        .map(|mut d| {
            if all_unset {
                d.weight = 1;
            }
            d
        })
        .collect();
    let timeout = match &a.timeout {
        None => Some(Duration::from_secs(15)),
        Some(d) => {
            let d = check::duration(
                v,
                &join(field, "timeout"),
                Some(d),
                Duration::ZERO,
                Duration::ZERO,
                HOUR,
            );
            (!d.is_zero()).then_some(d)
        }
    };
    let retry = a
        .retry
        .as_ref()
        .map(|r| retry_policy(v, &join(field, "retry"), r));
    let prefix_rewrite = (!a.prefix_rewrite.is_empty()).then(|| {
        if !a.prefix_rewrite.starts_with('/') {
            v.push(join(field, "prefix_rewrite"), "must start with '/'");
        }
        check::text(v, &join(field, "prefix_rewrite"), &a.prefix_rewrite);
        a.prefix_rewrite.clone()
    });
    RouteAction {
        destinations,
        timeout,
        retry,
        prefix_rewrite,
        request_headers: header_rewrite(
            v,
            &join(field, "request_headers"),
            a.request_headers.as_ref(),
        ),
        response_headers: header_rewrite(
            v,
            &join(field, "response_headers"),
            a.response_headers.as_ref(),
        ),
        upgrades: upgrades(v, &join(field, "upgrades"), a.upgrades.as_ref()),
    }
}

impl Route {
    /// Converts and validates; `field` is the route's path in the request.
    pub fn from_pb(r: &pb::Route, field: &str) -> Result<Route, Invalid> {
        let mut v = Violations::new();
        let (name, labels) = common(&mut v, field, &r.name, &r.labels);
        if r.rules.is_empty() {
            v.push(join(field, "rules"), "must have at least one rule");
        } else {
            check::count(
                &mut v,
                &join(field, "rules"),
                r.rules.len(),
                check::MAX_RULES,
            );
        }
        let rules = r
            .rules
            .iter()
            .take(check::MAX_RULES)
            .enumerate()
            .map(|(i, rule)| {
                let at = format!("{field}.rules[{i}]");
                check::count(
                    &mut v,
                    &join(&at, "matches"),
                    rule.matches.len(),
                    check::MAX_MATCHES,
                );
                let matches: Vec<RouteMatch> = rule
                    .matches
                    .iter()
                    .enumerate()
                    .map(|(j, m)| route_match(&mut v, &format!("{at}.matches[{j}]"), m))
                    .collect();
                let action = route_action(&mut v, &join(&at, "action"), rule.action.as_ref());
                if action.prefix_rewrite.is_some()
                    && !matches
                        .iter()
                        .all(|m| matches!(m.path, Some(PathMatch::Prefix(_))))
                {
                    v.push(
                        join(&at, "action.prefix_rewrite"),
                        "needs every match of the rule to have a path prefix",
                    );
                }
                RouteRule { matches, action }
            })
            .collect();
        v.finish(Route {
            name,
            labels,
            revision: r.revision,
            rules,
        })
    }
}

impl Listener {
    /// Converts and validates; `field` is the listener's path in the request.
    pub fn from_pb(l: &pb::Listener, field: &str) -> Result<Listener, Invalid> {
        let mut v = Violations::new();
        let (name, labels) = common(&mut v, field, &l.name, &l.labels);
        let address = if l.address.is_empty() {
            IpAddr::from([0, 0, 0, 0])
        } else {
            l.address.parse().unwrap_or_else(|_| {
                v.push(
                    join(field, "address"),
                    format_args!(
                        "{} is not an IP address (a listener binds an address, not a host name)",
                        check::quote(&l.address)
                    ),
                );
                IpAddr::from([0, 0, 0, 0])
            })
        };
        let port = check::port(&mut v, &join(field, "port"), l.port);
        let protocol = Protocol::from_pb(&mut v, &join(field, "protocol"), l.protocol);
        use pb::listener::Target as T;
        let target = match (&l.target, protocol) {
            (Some(T::Route(r)), Protocol::Http | Protocol::Http2 | Protocol::Grpc) => {
                check::reference(&mut v, &join(field, "route"), r);
                ListenerTarget::Route(r.clone())
            }
            (Some(T::Service(s)), Protocol::Tcp) => {
                check::reference(&mut v, &join(field, "service"), s);
                ListenerTarget::Service(s.clone())
            }
            (Some(T::Route(r)), Protocol::Tcp) => {
                v.push(
                    join(field, "route"),
                    "a tcp listener names a service, not a route",
                );
                ListenerTarget::Route(r.clone())
            }
            (Some(T::Service(s)), _) => {
                v.push(
                    join(field, "service"),
                    "an http, http2 or grpc listener names a route, not a service",
                );
                ListenerTarget::Service(s.clone())
            }
            (None, Protocol::Tcp) => {
                v.push(join(field, "service"), "must be set for a tcp listener");
                ListenerTarget::Service(String::new())
            }
            (None, _) => {
                v.push(
                    join(field, "route"),
                    "must be set for an http, http2 or grpc listener",
                );
                ListenerTarget::Route(String::new())
            }
        };
        check::labels(
            &mut v,
            &join(field, "node_selector"),
            l.node_selector.iter(),
        );
        v.finish(Listener {
            name,
            labels,
            revision: l.revision,
            address,
            port,
            protocol,
            target,
            node_selector: l.node_selector.clone(),
        })
    }
}

#[cfg(test)]
mod tests;
