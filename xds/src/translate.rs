//! A node's configuration → Envoy v3 resources.
//!
//! Names: a Switchyard listener, route or service keeps its name as the
//! Envoy Listener, RouteConfiguration or Cluster; a destination with a label
//! subset gets a Cluster of its own (`SERVICE|key=value,...`) holding only
//! the endpoints with those labels, because proxyless gRPC clients have no
//! subset load balancing and one rule for both flavors is simpler.
//!
//! Routing keeps Switchyard's first-match order across hosts: every route
//! lives in one virtual host (`*`), and a rule's host match becomes a match
//! on `:authority`. A rule with several matches becomes one Envoy route per
//! match, with the same action.
//!
//! What Envoy cannot express is refused with the field named (an endpoint
//! given by host name: EDS takes IP addresses only), never dropped.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::core::v3 as core;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3 as hcm;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3 as tcp;
use envoy_types::pb::envoy::extensions::load_balancing_policies as lbp;
use envoy_types::pb::envoy::extensions::upstreams::http::v3 as upstream_http;
use envoy_types::pb::envoy::r#type::matcher::v3 as matcher;
use envoy_types::pb::envoy::r#type::v3 as types;
use envoy_types::pb::google::protobuf::{self as gpb, Any, UInt32Value};
use envoy_types::util::pack_any;
use switchyard::node::NodeConfig;
use switchyard::resource::{
    Balance, Endpoint, HashOn, HeaderRewrite, Health, HostMatch, Labels, ListenerTarget, PathMatch,
    Protocol, RetryOn, RetryPolicy, RouteAction, RouteMatch, Service, StringMatch,
};
use switchyard::validate::{Invalid, Violations};

use crate::type_url;

/// Which kind of client the resources are for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Flavor {
    /// Envoy: socket listeners, every policy.
    Envoy,
    /// Proxyless gRPC clients (grpcio, grpc-go, grpc-js-xds): API
    /// listeners, load-balancing policy lists that end in one they all
    /// support, one cluster per label subset, endpoint weights ignored.
    Proxyless,
}

/// One flavor of a node's configuration as xDS resources, each encoded
/// once, by type URL then name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Resources {
    /// The Switchyard revision they were made from.
    pub revision: u64,
    /// By type URL (see [`type_url`]), then resource name.
    pub by_type: BTreeMap<&'static str, BTreeMap<String, Any>>,
}

impl Resources {
    /// The resources of one type, by name (empty when none).
    pub fn of(&self, type_url: &str) -> impl Iterator<Item = (&String, &Any)> {
        self.by_type.get(type_url).into_iter().flatten()
    }

    fn put<T: prost::Name + prost::Message>(&mut self, url: &'static str, name: &str, value: T) {
        self.by_type
            .entry(url)
            .or_default()
            .insert(name.to_owned(), pack_any(value));
    }
}

/// The health an endpoint is served with: its own, or a fresher one the
/// caller knows (the agent's own checks of its node's endpoints).
pub type HealthOf<'a> = &'a dyn Fn(&Endpoint) -> Health;

/// Translates `config` for `flavor`, with the endpoints' health from
/// `health`. Refuses, naming every field at fault, what the flavor cannot
/// express.
pub fn translate(
    config: &NodeConfig,
    flavor: Flavor,
    health: HealthOf<'_>,
) -> Result<Resources, Invalid> {
    let mut v = Violations::new();
    let mut out = Resources {
        revision: config.revision,
        ..Resources::default()
    };
    for (name, e) in &config.endpoints {
        if e.address.parse::<std::net::IpAddr>().is_err() {
            v.push(
                format!("endpoint/{name}.address"),
                format_args!(
                    "{:?} is a host name: xDS endpoints (EDS) take IP addresses only",
                    e.address
                ),
            );
        }
    }

    // Every cluster a route or TCP listener needs: whole services, and the
    // label subsets destinations ask for.
    let mut clusters: BTreeMap<String, (&Service, Labels)> = BTreeMap::new();
    let mut retry_budgets: BTreeMap<String, u8> = BTreeMap::new();
    for s in config.services.values() {
        clusters.insert(s.name.clone(), (s, Labels::new()));
    }
    let mut upgrades_of: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for (rname, r) in &config.routes {
        let mut route_cfg = route::RouteConfiguration {
            name: rname.clone(),
            ..Default::default()
        };
        let mut routes = Vec::new();
        let ups = upgrades_of.entry(rname.as_str()).or_default();
        for rule in &r.rules {
            ups.extend(rule.action.upgrades.iter().cloned());
        }
        for (i, rule) in r.rules.iter().enumerate() {
            let at = format!("route/{rname}.rules[{i}].action");
            for d in &rule.action.destinations {
                let Some(s) = config.services.get(&d.service) else {
                    v.push(
                        format!("{at}.destinations"),
                        format_args!("service {:?} is not on this node", d.service),
                    );
                    continue;
                };
                clusters.insert(cluster_name(&d.service, &d.subset), (s, d.subset.clone()));
                if let Some(retry) = &rule.action.retry {
                    let name = cluster_name(&d.service, &d.subset);
                    let b = retry_budgets.entry(name).or_insert(retry.budget_percent);
                    *b = (*b).min(retry.budget_percent);
                }
            }
            let action = route_action(&mut v, &at, &rule.action, config, flavor, ups);
            let (to_add, to_remove) = header_edits(&rule.action.request_headers);
            let (resp_add, resp_remove) = header_edits(&rule.action.response_headers);
            let matches: Vec<RouteMatch> = if rule.matches.is_empty() {
                vec![RouteMatch::default()]
            } else {
                rule.matches.clone()
            };
            for (j, m) in matches.iter().enumerate() {
                routes.push(route::Route {
                    name: format!("{rname}/{i}/{j}"),
                    r#match: Some(route_match(m)),
                    action: Some(route::route::Action::Route(action.clone())),
                    request_headers_to_add: to_add.clone(),
                    request_headers_to_remove: to_remove.clone(),
                    response_headers_to_add: resp_add.clone(),
                    response_headers_to_remove: resp_remove.clone(),
                    ..Default::default()
                });
            }
        }
        route_cfg.virtual_hosts.push(route::VirtualHost {
            name: rname.clone(),
            domains: vec!["*".to_owned()],
            routes,
            ..Default::default()
        });
        out.put(type_url::ROUTE, rname, route_cfg);
    }

    for (name, (service, subset)) in &clusters {
        let budget = retry_budgets.get(name).copied();
        out.put(
            type_url::CLUSTER,
            name,
            make_cluster(&mut v, name, service, budget, flavor),
        );
        let members = config
            .endpoints
            .values()
            .filter(|e| e.service == service.name)
            .filter(|e| subset.iter().all(|(k, val)| e.labels.get(k) == Some(val)))
            .map(|e| &**e);
        out.put(
            type_url::ENDPOINT,
            name,
            load_assignment(name, members, health),
        );
    }

    for (lname, l) in &config.listeners {
        let at = format!("listener/{lname}");
        match &l.target {
            ListenerTarget::Route(r) => {
                if !config.routes.contains_key(r) {
                    v.push(
                        format!("{at}.route"),
                        format_args!("route {r:?} is not on this node"),
                    );
                }
                let ups = upgrades_of.get(r.as_str()).cloned().unwrap_or_default();
                let manager = http_manager(lname, r, &ups);
                let value = match flavor {
                    Flavor::Envoy => listener::Listener {
                        name: lname.clone(),
                        address: Some(socket(&l.address.to_string(), l.port)),
                        filter_chains: vec![listener::FilterChain {
                            filters: vec![listener::Filter {
                                name: "envoy.filters.network.http_connection_manager".into(),
                                config_type: Some(listener::filter::ConfigType::TypedConfig(
                                    pack_any(manager),
                                )),
                            }],
                            ..Default::default()
                        }],
                        ..Default::default()
                    },
                    // A proxyless client asks for its listener by the name
                    // of its target (`xds:///NAME`) and opens no socket.
                    Flavor::Proxyless => listener::Listener {
                        name: lname.clone(),
                        api_listener: Some(listener::ApiListener {
                            api_listener: Some(pack_any(manager)),
                        }),
                        ..Default::default()
                    },
                };
                out.put(type_url::LISTENER, lname, value);
            }
            ListenerTarget::Service(s) => {
                if !config.services.contains_key(s) {
                    v.push(
                        format!("{at}.service"),
                        format_args!("service {s:?} is not on this node"),
                    );
                }
                // Proxyless clients speak gRPC only: a TCP listener is not
                // theirs, and is simply not served to them.
                if flavor == Flavor::Proxyless {
                    continue;
                }
                let proxy = tcp::TcpProxy {
                    stat_prefix: lname.clone(),
                    cluster_specifier: Some(tcp::tcp_proxy::ClusterSpecifier::Cluster(s.clone())),
                    ..Default::default()
                };
                let value = listener::Listener {
                    name: lname.clone(),
                    address: Some(socket(&l.address.to_string(), l.port)),
                    filter_chains: vec![listener::FilterChain {
                        filters: vec![listener::Filter {
                            name: "envoy.filters.network.tcp_proxy".into(),
                            config_type: Some(listener::filter::ConfigType::TypedConfig(pack_any(
                                proxy,
                            ))),
                        }],
                        ..Default::default()
                    }],
                    ..Default::default()
                };
                out.put(type_url::LISTENER, lname, value);
            }
        }
    }
    v.finish(out)
}

/// The Cluster (and ClusterLoadAssignment) name of `service` restricted to
/// the endpoints with the labels `subset`.
pub fn cluster_name(service: &str, subset: &Labels) -> String {
    if subset.is_empty() {
        return service.to_owned();
    }
    let mut name = format!("{service}|");
    for (i, (k, v)) in subset.iter().enumerate() {
        if i > 0 {
            name.push(',');
        }
        let _ = write!(name, "{k}={v}");
    }
    name
}

fn duration(d: Duration) -> gpb::Duration {
    gpb::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: i32::try_from(d.subsec_nanos()).unwrap_or(0),
    }
}

fn socket(address: &str, port: u16) -> core::Address {
    core::Address {
        address: Some(core::address::Address::SocketAddress(core::SocketAddress {
            address: address.to_owned(),
            port_specifier: Some(core::socket_address::PortSpecifier::PortValue(u32::from(
                port,
            ))),
            ..Default::default()
        })),
    }
}

/// Everything comes over the one ADS stream the client opened.
fn ads() -> core::ConfigSource {
    core::ConfigSource {
        resource_api_version: core::ApiVersion::V3 as i32,
        config_source_specifier: Some(core::config_source::ConfigSourceSpecifier::Ads(
            core::AggregatedConfigSource::default(),
        )),
        ..Default::default()
    }
}

fn http_manager(
    listener: &str,
    route: &str,
    upgrades: &BTreeSet<String>,
) -> hcm::HttpConnectionManager {
    hcm::HttpConnectionManager {
        stat_prefix: listener.to_owned(),
        // HTTP/1.1 and HTTP/2 with prior knowledge, as Switchyard's own
        // listeners accept.
        codec_type: hcm::http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(hcm::http_connection_manager::RouteSpecifier::Rds(
            hcm::Rds {
                config_source: Some(ads()),
                route_config_name: route.to_owned(),
            },
        )),
        http_filters: vec![hcm::HttpFilter {
            name: "envoy.filters.http.router".into(),
            config_type: Some(hcm::http_filter::ConfigType::TypedConfig(pack_any(
                Router::default(),
            ))),
            ..Default::default()
        }],
        // Enabled here, then allowed or not rule by rule (route level).
        upgrade_configs: upgrades
            .iter()
            .map(|u| hcm::http_connection_manager::UpgradeConfig {
                upgrade_type: u.clone(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn string_matcher(m: &StringMatch) -> Option<matcher::StringMatcher> {
    use matcher::string_matcher::MatchPattern as P;
    let pattern = match m {
        StringMatch::Exact(s) => P::Exact(s.clone()),
        StringMatch::Prefix(s) => P::Prefix(s.clone()),
        StringMatch::Regex(r) => P::SafeRegex(regex(r.as_str())),
        StringMatch::Present => return None,
    };
    Some(matcher::StringMatcher {
        match_pattern: Some(pattern),
        ignore_case: false,
    })
}

fn regex(r: &str) -> matcher::RegexMatcher {
    matcher::RegexMatcher {
        regex: r.to_owned(),
        ..Default::default()
    }
}

fn header(name: &str, m: Option<matcher::StringMatcher>, invert: bool) -> route::HeaderMatcher {
    use route::header_matcher::HeaderMatchSpecifier as H;
    route::HeaderMatcher {
        name: name.to_owned(),
        header_match_specifier: Some(match m {
            Some(m) => H::StringMatch(m),
            None => H::PresentMatch(true),
        }),
        invert_match: invert,
        ..Default::default()
    }
}

/// Escapes `s` for RE2.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.+*?()|[]{}^$".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn route_match(m: &RouteMatch) -> route::RouteMatch {
    use route::route_match::PathSpecifier as P;
    let path = match &m.path {
        None => P::Prefix("/".into()),
        Some(PathMatch::Exact(p)) => P::Path(p.clone()),
        Some(PathMatch::Prefix(p)) => P::Prefix(p.clone()),
        Some(PathMatch::Regex(r)) => P::SafeRegex(regex(r.as_str())),
    };
    let mut headers = Vec::new();
    // The host without its port, compared ignoring case, as Switchyard's
    // own router does.
    if let Some(host) = &m.host {
        let re = match host {
            HostMatch::Exact(h) => format!("(?i){}(:[0-9]+)?", quote(h)),
            HostMatch::Suffix(s) => format!("(?i).+{}(:[0-9]+)?", quote(s)),
        };
        headers.push(header(
            ":authority",
            Some(matcher::StringMatcher {
                match_pattern: Some(matcher::string_matcher::MatchPattern::SafeRegex(regex(&re))),
                ignore_case: false,
            }),
            false,
        ));
    }
    if let Some(method) = &m.method {
        headers.push(header(
            ":method",
            string_matcher(&StringMatch::Exact(method.clone())),
            false,
        ));
    }
    for h in &m.headers {
        headers.push(header(&h.name, string_matcher(&h.value), h.invert));
    }
    let query_parameters = m
        .query_params
        .iter()
        .map(|q| {
            use route::query_parameter_matcher::QueryParameterMatchSpecifier as Q;
            route::QueryParameterMatcher {
                name: q.name.clone(),
                query_parameter_match_specifier: Some(match string_matcher(&q.value) {
                    Some(m) => Q::StringMatch(m),
                    None => Q::PresentMatch(true),
                }),
            }
        })
        .collect();
    route::RouteMatch {
        path_specifier: Some(path),
        headers,
        query_parameters,
        ..Default::default()
    }
}

fn header_edits(h: &HeaderRewrite) -> (Vec<core::HeaderValueOption>, Vec<String>) {
    use core::header_value_option::HeaderAppendAction as A;
    let option = |(k, v): (&String, &String), action: A| core::HeaderValueOption {
        header: Some(core::HeaderValue {
            key: k.clone(),
            value: v.clone(),
            ..Default::default()
        }),
        append_action: action as i32,
        ..Default::default()
    };
    let mut add: Vec<_> = h
        .set
        .iter()
        .map(|kv| option(kv, A::OverwriteIfExistsOrAdd))
        .collect();
    add.extend(h.add.iter().map(|kv| option(kv, A::AppendIfExistsOrAdd)));
    (add, h.remove.clone())
}

fn hash_policy(on: &HashOn) -> route::route_action::HashPolicy {
    use route::route_action::hash_policy::{self as hp, PolicySpecifier as S};
    let spec = match on {
        HashOn::Header(name) => S::Header(hp::Header {
            header_name: name.clone(),
            ..Default::default()
        }),
        HashOn::Cookie(name) => S::Cookie(hp::Cookie {
            name: name.clone(),
            ..Default::default()
        }),
        HashOn::SourceIp => S::ConnectionProperties(hp::ConnectionProperties { source_ip: true }),
    };
    route::route_action::HashPolicy {
        policy_specifier: Some(spec),
        terminal: false,
    }
}

fn retry_on(policy: &RetryPolicy, flavor: Flavor) -> String {
    if flavor == Flavor::Proxyless {
        // gRPC clients retry on gRPC status codes only: a failed connect,
        // a reset and a gateway error all reach them as UNAVAILABLE.
        return "unavailable".into();
    }
    let names: Vec<&str> = policy
        .retry_on
        .iter()
        .map(|on| match on {
            RetryOn::ConnectFailure => "connect-failure",
            RetryOn::Reset => "reset",
            RetryOn::GatewayError => "gateway-error",
            RetryOn::ServerError => "5xx",
            RetryOn::RetriableStatus => "retriable-status-codes",
        })
        .collect();
    names.join(",")
}

fn route_action(
    v: &mut Violations,
    at: &str,
    a: &RouteAction,
    config: &NodeConfig,
    flavor: Flavor,
    listener_upgrades: &BTreeSet<String>,
) -> route::RouteAction {
    use route::route_action::ClusterSpecifier as C;
    let cluster_specifier = if let [only] = a.destinations.as_slice() {
        C::Cluster(cluster_name(&only.service, &only.subset))
    } else {
        C::WeightedClusters(route::WeightedCluster {
            clusters: a
                .destinations
                .iter()
                .map(|d| route::weighted_cluster::ClusterWeight {
                    name: cluster_name(&d.service, &d.subset),
                    weight: Some(UInt32Value { value: d.weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    };
    // The hash policies of the consistent-hashing services routed to.
    let mut hash = Vec::new();
    for d in &a.destinations {
        if let Some(s) = config.services.get(&d.service)
            && let Balance::RingHash(on) | Balance::Maglev(on) = &s.balance
        {
            let p = hash_policy(on);
            if !hash.contains(&p) {
                hash.push(p);
            }
        }
    }
    let retry_policy = a.retry.as_ref().filter(|r| r.attempts > 0).map(|r| {
        let mut codes = r
            .retriable_status_codes
            .iter()
            .map(|&c| u32::from(c))
            .collect();
        if flavor == Flavor::Proxyless {
            codes = Vec::new();
        }
        route::RetryPolicy {
            retry_on: retry_on(r, flavor),
            num_retries: Some(UInt32Value { value: r.attempts }),
            per_try_timeout: r.per_try_timeout.map(duration),
            retriable_status_codes: codes,
            retry_back_off: Some(route::retry_policy::RetryBackOff {
                base_interval: Some(duration(r.backoff_base)),
                max_interval: Some(duration(r.backoff_max)),
            }),
            ..Default::default()
        }
    });
    let _ = (v, at);
    let mut action = route::RouteAction {
        cluster_specifier: Some(cluster_specifier),
        hash_policy: hash,
        retry_policy,
        prefix_rewrite: a.prefix_rewrite.clone().unwrap_or_default(),
        upgrade_configs: listener_upgrades
            .iter()
            .map(|u| route::route_action::UpgradeConfig {
                upgrade_type: u.clone(),
                enabled: Some(gpb::BoolValue {
                    value: a.upgrades.contains(u),
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    match flavor {
        // No timeout is Envoy's 0.
        Flavor::Envoy => action.timeout = Some(duration(a.timeout.unwrap_or_default())),
        // gRPC clients read a stream's deadline from max_stream_duration.
        Flavor::Proxyless => {
            action.max_stream_duration =
                a.timeout.map(|t| route::route_action::MaxStreamDuration {
                    max_stream_duration: Some(duration(t)),
                    ..Default::default()
                });
        }
    }
    action
}

/// A typed extension config.
fn extension<T: prost::Name + prost::Message>(name: &str, value: T) -> core::TypedExtensionConfig {
    core::TypedExtensionConfig {
        name: name.to_owned(),
        typed_config: Some(pack_any(value)),
    }
}

fn make_cluster(
    v: &mut Violations,
    name: &str,
    s: &Service,
    retry_budget: Option<u8>,
    flavor: Flavor,
) -> cluster::Cluster {
    use cluster::cluster::LbPolicy;
    let _ = v;
    // An unset limit is unlimited in Switchyard, 1024 in Envoy.
    let limit = |l: Option<u32>| {
        Some(UInt32Value {
            value: l.unwrap_or(u32::MAX),
        })
    };
    let cb = &s.circuit_breaker;
    let thresholds = cluster::circuit_breakers::Thresholds {
        max_connections: limit(cb.max_connections),
        max_pending_requests: limit(cb.max_pending_requests),
        max_requests: limit(cb.max_requests),
        max_retries: limit(cb.max_retries),
        // Envoy keeps a retry budget per cluster, Switchyard per route: the
        // smallest budget of the routes to this cluster applies.
        retry_budget: retry_budget.map(|p| cluster::circuit_breakers::thresholds::RetryBudget {
            budget_percent: Some(types::Percent {
                value: f64::from(p),
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let outlier_detection = s.outlier_detection.as_ref().map(|o| {
        let on = |n: u32| {
            Some(UInt32Value {
                value: u32::from(n > 0) * 100,
            })
        };
        cluster::OutlierDetection {
            consecutive_5xx: Some(UInt32Value {
                value: o.consecutive_5xx.max(1),
            }),
            enforcing_consecutive_5xx: on(o.consecutive_5xx),
            // Connect failures are "local origin" errors, counted apart
            // from the 5xx only when split.
            split_external_local_origin_errors: true,
            consecutive_local_origin_failure: Some(UInt32Value {
                value: o.consecutive_connect_failures.max(1),
            }),
            enforcing_consecutive_local_origin_failure: on(o.consecutive_connect_failures),
            // Switchyard has no success-rate or gateway-failure ejection;
            // Envoy enables the first by default.
            enforcing_consecutive_gateway_failure: on(0),
            enforcing_success_rate: on(0),
            enforcing_local_origin_success_rate: on(0),
            base_ejection_time: Some(duration(o.base_ejection_time)),
            max_ejection_time: Some(duration(o.max_ejection_time)),
            max_ejection_percent: Some(UInt32Value {
                value: u32::from(o.max_ejection_percent),
            }),
            interval: Some(duration(Duration::from_secs(1))),
            ..Default::default()
        }
    });
    let http2 = matches!(s.protocol, Protocol::Http2 | Protocol::Grpc);
    let mut options = BTreeMap::new();
    if s.protocol != Protocol::Tcp {
        use upstream_http::http_protocol_options::{
            ExplicitHttpConfig, UpstreamProtocolOptions, explicit_http_config::ProtocolConfig,
        };
        let protocol = if http2 {
            ProtocolConfig::Http2ProtocolOptions(core::Http2ProtocolOptions::default())
        } else {
            ProtocolConfig::HttpProtocolOptions(core::Http1ProtocolOptions::default())
        };
        let opts = upstream_http::HttpProtocolOptions {
            common_http_protocol_options: Some(core::HttpProtocolOptions {
                idle_timeout: Some(duration(s.idle_timeout)),
                ..Default::default()
            }),
            upstream_protocol_options: Some(UpstreamProtocolOptions::ExplicitHttpConfig(
                ExplicitHttpConfig {
                    protocol_config: Some(protocol),
                },
            )),
            ..Default::default()
        };
        options.insert(
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions".to_owned(),
            pack_any(opts),
        );
    }
    let mut c = cluster::Cluster {
        name: name.to_owned(),
        cluster_discovery_type: Some(cluster::cluster::ClusterDiscoveryType::Type(
            cluster::cluster::DiscoveryType::Eds as i32,
        )),
        eds_cluster_config: Some(cluster::cluster::EdsClusterConfig {
            eds_config: Some(ads()),
            service_name: name.to_owned(),
        }),
        connect_timeout: Some(duration(s.connect_timeout)),
        circuit_breakers: Some(cluster::CircuitBreakers {
            thresholds: vec![thresholds],
            ..Default::default()
        }),
        outlier_detection,
        common_lb_config: Some(cluster::cluster::CommonLbConfig {
            healthy_panic_threshold: Some(types::Percent {
                value: f64::from(s.panic_threshold_percent),
            }),
            ..Default::default()
        }),
        typed_extension_protocol_options: options.into_iter().collect(),
        ..Default::default()
    };
    match flavor {
        Flavor::Envoy => {
            c.lb_policy = match &s.balance {
                Balance::RoundRobin => LbPolicy::RoundRobin,
                Balance::LeastRequest => LbPolicy::LeastRequest,
                Balance::Random => LbPolicy::Random,
                Balance::RingHash(_) => LbPolicy::RingHash,
                Balance::Maglev(_) => LbPolicy::Maglev,
            } as i32;
        }
        Flavor::Proxyless => {
            // A list: a client takes the first policy it supports, so each
            // ends in round robin, which every gRPC client has.
            let rr = || extension("round_robin", lbp::round_robin::v3::RoundRobin::default());
            let ring = || extension("ring_hash", lbp::ring_hash::v3::RingHash::default());
            let policies = match &s.balance {
                Balance::RoundRobin | Balance::Random => vec![rr()],
                Balance::LeastRequest => vec![
                    extension(
                        "least_request",
                        lbp::least_request::v3::LeastRequest::default(),
                    ),
                    rr(),
                ],
                Balance::RingHash(_) | Balance::Maglev(_) => vec![ring(), rr()],
            };
            c.load_balancing_policy = Some(cluster::LoadBalancingPolicy {
                policies: policies
                    .into_iter()
                    .map(|p| cluster::load_balancing_policy::Policy {
                        typed_extension_config: Some(p),
                    })
                    .collect(),
            });
        }
    }
    c
}

fn health_status(h: Health) -> core::HealthStatus {
    match h {
        Health::Unknown => core::HealthStatus::Unknown,
        Health::Healthy => core::HealthStatus::Healthy,
        Health::Unhealthy => core::HealthStatus::Unhealthy,
        Health::Draining => core::HealthStatus::Draining,
    }
}

fn load_assignment<'a>(
    name: &str,
    members: impl Iterator<Item = &'a Endpoint>,
    health: HealthOf<'_>,
) -> endpoint::ClusterLoadAssignment {
    // One locality per zone; endpoints with no zone share one with none.
    let mut zones: BTreeMap<Option<&str>, Vec<endpoint::LbEndpoint>> = BTreeMap::new();
    for e in members {
        zones
            .entry(e.zone.as_deref())
            .or_default()
            .push(endpoint::LbEndpoint {
                health_status: health_status(health(e)) as i32,
                load_balancing_weight: Some(UInt32Value { value: e.weight }),
                host_identifier: Some(endpoint::lb_endpoint::HostIdentifier::Endpoint(
                    endpoint::Endpoint {
                        address: Some(socket(&e.address, e.port)),
                        ..Default::default()
                    },
                )),
                ..Default::default()
            });
    }
    endpoint::ClusterLoadAssignment {
        cluster_name: name.to_owned(),
        endpoints: zones
            .into_iter()
            .map(|(zone, lb_endpoints)| endpoint::LocalityLbEndpoints {
                locality: zone.map(|z| core::Locality {
                    zone: z.to_owned(),
                    ..Default::default()
                }),
                lb_endpoints,
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests;
