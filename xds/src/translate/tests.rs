//! The translation, checked on the resources a user would look at.

use envoy_types::pb::envoy::config::cluster::v3 as cluster;
use envoy_types::pb::envoy::config::endpoint::v3 as endpoint;
use envoy_types::pb::envoy::config::listener::v3 as listener;
use envoy_types::pb::envoy::config::route::v3 as route;
use prost::Message;
use switchyard::node::NodeConfig;
use switchyard::pb;
use switchyard::resource::{Endpoint, Health, Resource};

use super::*;

fn config(resources: Vec<pb::resource::Kind>) -> NodeConfig {
    let mut c = NodeConfig {
        revision: 7,
        ..NodeConfig::default()
    };
    for kind in resources {
        let r = pb::Resource {
            kind: Some(kind),
            ..Default::default()
        };
        c.insert(Resource::from_pb(&r, "r").expect("valid"));
    }
    c
}

fn web(ring: Option<pb::HashPolicy>, address: &str) -> NodeConfig {
    use pb::resource::Kind as K;
    config(vec![
        K::Service(pb::Service {
            name: "web".into(),
            lb_policy: if ring.is_some() {
                pb::LbPolicy::RingHash as i32
            } else {
                0
            },
            hash_policy: ring,
            ..Default::default()
        }),
        K::Endpoint(pb::Endpoint {
            name: "web-1".into(),
            service: "web".into(),
            address: address.into(),
            port: 8080,
            zone: "z1".into(),
            labels: [("v".to_string(), "2".to_string())].into(),
            ..Default::default()
        }),
        K::Endpoint(pb::Endpoint {
            name: "web-2".into(),
            service: "web".into(),
            address: "10.0.0.2".into(),
            port: 8080,
            health: pb::Health::Unhealthy as i32,
            ..Default::default()
        }),
        K::Route(pb::Route {
            name: "web".into(),
            rules: vec![pb::RouteRule {
                matches: vec![pb::RouteMatch {
                    path: Some(pb::PathMatch {
                        kind: Some(pb::path_match::Kind::Regex("/api/[0-9]+".into())),
                    }),
                    ..Default::default()
                }],
                action: Some(pb::RouteAction {
                    destinations: vec![
                        pb::WeightedDestination {
                            service: "web".into(),
                            weight: 90,
                            ..Default::default()
                        },
                        pb::WeightedDestination {
                            service: "web".into(),
                            weight: 10,
                            subset: [("v".to_string(), "2".to_string())].into(),
                        },
                    ],
                    ..Default::default()
                }),
            }],
            ..Default::default()
        }),
        K::Listener(pb::Listener {
            name: "front".into(),
            address: "127.0.0.1".into(),
            port: 8000,
            target: Some(pb::listener::Target::Route("web".into())),
            ..Default::default()
        }),
    ])
}

fn own(e: &Endpoint) -> Health {
    e.health
}

fn get<T: Message + Default>(r: &Resources, url: &str, name: &str) -> T {
    let any = r
        .by_type
        .get(url)
        .and_then(|m| m.get(name))
        .unwrap_or_else(|| panic!("no {url} {name}"));
    T::decode(any.value.as_slice()).unwrap()
}

#[test]
fn envoy_gets_weighted_subsets_regex_and_health() {
    let r = translate(&web(None, "10.0.0.1"), Flavor::Envoy, &own).unwrap();
    assert_eq!(r.revision, 7);
    let rc: route::RouteConfiguration = get(&r, type_url::ROUTE, "web");
    let rt = &rc.virtual_hosts[0].routes[0];
    let Some(route::route_match::PathSpecifier::SafeRegex(re)) =
        &rt.r#match.as_ref().unwrap().path_specifier
    else {
        panic!("not a regex")
    };
    assert_eq!(re.regex, "^(?:/api/[0-9]+)$");
    let Some(route::route::Action::Route(a)) = &rt.action else {
        panic!()
    };
    let Some(route::route_action::ClusterSpecifier::WeightedClusters(w)) = &a.cluster_specifier
    else {
        panic!("not weighted")
    };
    let split: Vec<(String, u32)> = w
        .clusters
        .iter()
        .map(|c| (c.name.clone(), c.weight.unwrap().value))
        .collect();
    assert_eq!(split, [("web".into(), 90), ("web|v=2".into(), 10)]);

    // The subset cluster holds only the labelled endpoint.
    let all: endpoint::ClusterLoadAssignment = get(&r, type_url::ENDPOINT, "web");
    let sub: endpoint::ClusterLoadAssignment = get(&r, type_url::ENDPOINT, "web|v=2");
    let count = |c: &endpoint::ClusterLoadAssignment| {
        c.endpoints
            .iter()
            .map(|l| l.lb_endpoints.len())
            .sum::<usize>()
    };
    assert_eq!((count(&all), count(&sub)), (2, 1));
    let zones: Vec<_> = all
        .endpoints
        .iter()
        .map(|l| l.locality.as_ref().map(|l| l.zone.clone()))
        .collect();
    assert_eq!(zones, [None, Some("z1".into())]);
    let statuses: Vec<i32> = all
        .endpoints
        .iter()
        .flat_map(|l| l.lb_endpoints.iter().map(|e| e.health_status))
        .collect();
    assert_eq!(
        statuses,
        [
            core::HealthStatus::Unhealthy as i32,
            core::HealthStatus::Unknown as i32
        ]
    );

    let c: cluster::Cluster = get(&r, type_url::CLUSTER, "web");
    assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::RoundRobin as i32);
    // Unset limits are unlimited, not Envoy's 1024.
    let t = &c.circuit_breakers.unwrap().thresholds[0];
    assert_eq!(t.max_connections.unwrap().value, u32::MAX);

    let l: listener::Listener = get(&r, type_url::LISTENER, "front");
    assert!(l.address.is_some() && l.api_listener.is_none());
}

#[test]
fn ring_hash_sets_the_route_hash_policy_and_proxyless_gets_a_fallback() {
    let balance = pb::HashPolicy {
        source: Some(pb::hash_policy::Source::Header("x-user".into())),
    };
    let cfg = web(Some(balance), "10.0.0.1");
    let r = translate(&cfg, Flavor::Envoy, &own).unwrap();
    let c: cluster::Cluster = get(&r, type_url::CLUSTER, "web");
    assert_eq!(c.lb_policy, cluster::cluster::LbPolicy::RingHash as i32);
    let rc: route::RouteConfiguration = get(&r, type_url::ROUTE, "web");
    let Some(route::route::Action::Route(a)) = &rc.virtual_hosts[0].routes[0].action else {
        panic!()
    };
    assert_eq!(a.hash_policy.len(), 1);

    let p = translate(&cfg, Flavor::Proxyless, &own).unwrap();
    let c: cluster::Cluster = get(&p, type_url::CLUSTER, "web");
    let names: Vec<String> = c
        .load_balancing_policy
        .unwrap()
        .policies
        .iter()
        .map(|p| p.typed_extension_config.as_ref().unwrap().name.clone())
        .collect();
    assert_eq!(names, ["ring_hash", "round_robin"]);
    let l: listener::Listener = get(&p, type_url::LISTENER, "front");
    assert!(l.api_listener.is_some() && l.address.is_none());
}

#[test]
fn a_host_name_endpoint_is_refused_naming_the_field() {
    let err = translate(&web(None, "db.example.com"), Flavor::Envoy, &own).unwrap_err();
    assert_eq!(err.violations[0].field, "endpoint/web-1.address");
    assert!(err.violations[0].reason.contains("IP addresses only"));
}

#[test]
fn the_caller_s_health_overrides() {
    let down = |_: &Endpoint| Health::Draining;
    let r = translate(&web(None, "10.0.0.1"), Flavor::Envoy, &down).unwrap();
    let all: endpoint::ClusterLoadAssignment = get(&r, type_url::ENDPOINT, "web");
    assert!(
        all.endpoints
            .iter()
            .flat_map(|l| &l.lb_endpoints)
            .all(|e| e.health_status == core::HealthStatus::Draining as i32)
    );
}
