//! The stages of `forward` that need no network: routing, the upstream
//! head, and the retry decision.

use hyper::header::HeaderValue;
use switchyard::node::NodeConfig;
use switchyard::pb;
use switchyard::resource::Resource;

use super::*;
use crate::{Services, Table};

/// A table for one listener `front` on a route `web` with two rules:
/// `/api/` prefix to service `api`, rewritten to `/`, and the rest to
/// `web`.
fn table() -> Table {
    let dest = |service: &str| pb::WeightedDestination {
        service: service.into(),
        weight: 1,
        ..Default::default()
    };
    let prefix = pb::RouteMatch {
        path: Some(pb::PathMatch {
            kind: Some(pb::path_match::Kind::Prefix("/api/".into())),
        }),
        ..Default::default()
    };
    let kinds = [
        pb::resource::Kind::Service(pb::Service {
            name: "web".into(),
            revision: 1,
            ..Default::default()
        }),
        pb::resource::Kind::Service(pb::Service {
            name: "api".into(),
            revision: 1,
            ..Default::default()
        }),
        pb::resource::Kind::Route(pb::Route {
            name: "web".into(),
            revision: 1,
            rules: vec![
                pb::RouteRule {
                    matches: vec![prefix],
                    action: Some(pb::RouteAction {
                        destinations: vec![dest("api")],
                        prefix_rewrite: "/".into(),
                        ..Default::default()
                    }),
                },
                pb::RouteRule {
                    matches: vec![],
                    action: Some(pb::RouteAction {
                        destinations: vec![dest("web")],
                        ..Default::default()
                    }),
                },
            ],
            ..Default::default()
        }),
        pb::resource::Kind::Listener(pb::Listener {
            name: "front".into(),
            address: "127.0.0.1".into(),
            port: 1,
            target: Some(pb::listener::Target::Route("web".into())),
            revision: 1,
            ..Default::default()
        }),
    ];
    let mut config = NodeConfig::default();
    for kind in kinds {
        let raw = pb::Resource {
            kind: Some(kind),
            ..Default::default()
        };
        config.insert(Resource::from_pb(&raw, "test").expect("valid"));
    }
    Table::compile(&config, &Services::default(), 1, None)
}

fn parts(path: &str) -> hyper::http::request::Parts {
    let mut req = Request::new(());
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut()
        .insert(header::HOST, HeaderValue::from_static("web.example"));
    req.into_parts().0
}

#[test]
fn route_finds_the_rule_destination_and_rewrite() {
    let table = table();
    let api = route(&table, "front", &parts("/api/users?x=1"), 0).unwrap();
    assert_eq!(api.upstream.service.name, "api");
    assert_eq!(api.path.as_ref().map(|p| p.as_str()), Some("/users?x=1"));
    let web = route(&table, "front", &parts("/index.html"), 7).unwrap();
    assert_eq!(web.upstream.service.name, "web");
    assert!(web.path.is_none(), "no rewrite");
    assert_eq!(
        route(&table, "gone", &parts("/"), 0).map(|r| r.upstream.service.name.clone()),
        Err(Refusal::NotConfigured)
    );
}

#[test]
fn the_upstream_head_drops_this_hops_fields_and_adds_the_proxys() {
    let table = table();
    let rule = route(&table, "front", &parts("/"), 0).unwrap().rule;
    let client = HeaderValue::from_static("10.0.0.9");
    let mut p = parts("/");
    for (name, value) in [
        ("connection", "keep-alive, x-secret"),
        ("x-secret", "1"),
        ("keep-alive", "timeout=5"),
        ("te", "gzip, trailers"),
        ("upgrade", "websocket"),
        ("x-forwarded-for", "192.0.2.1"),
    ] {
        p.headers.append(name, HeaderValue::from_static(value));
    }
    let authority = upstream_head(&mut p, rule, Protocol::Http, &client);
    assert!(authority.is_none(), "HTTP/1.1 keeps Host");
    let h = &p.headers;
    for gone in ["connection", "x-secret", "keep-alive", "upgrade"] {
        assert!(!h.contains_key(gone), "{gone} is this hop's");
    }
    assert_eq!(h["te"], "trailers", "only te: trailers passes");
    assert_eq!(h["x-forwarded-for"], "192.0.2.1, 10.0.0.9");
    assert_eq!(h["x-request-id"].len(), 32);
    assert_eq!(h[header::HOST], "web.example");

    let mut p = parts("/");
    p.headers
        .insert("x-request-id", HeaderValue::from_static("mine"));
    let authority = upstream_head(&mut p, rule, Protocol::Grpc, &client);
    assert_eq!(
        authority.map(|a| a.to_string()).as_deref(),
        Some("web.example")
    );
    assert!(
        !p.headers.contains_key(header::HOST),
        "HTTP/2: :authority only"
    );
    assert_eq!(p.headers["x-request-id"], "mine", "the client's id is kept");
    assert!(!p.headers.contains_key("te"));
}

#[test]
fn retries_follow_the_policy_and_the_errors_safety() {
    let policy = RetryPolicy {
        attempts: 2,
        per_try_timeout: None,
        retry_on: vec![RetryOn::ConnectFailure, RetryOn::Reset],
        retriable_status_codes: vec![],
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(1),
        budget_percent: 20,
    };
    let connect = || Err(Error::upstream(Kind::Connect, Retry::Safe));
    let reset = || Err(Error::upstream(Kind::Closed, Retry::Idempotent));
    let timeout = || Err(Error::upstream(Kind::Timeout, Retry::Idempotent));
    // Nothing was sent: even a POST goes again.
    assert!(should_retry(&policy, &connect(), false, false));
    // The endpoint may have acted on it: only an idempotent request.
    assert!(should_retry(&policy, &reset(), true, false));
    assert!(!should_retry(&policy, &reset(), false, false));
    // Not asked for by the policy; or no try left.
    assert!(!should_retry(&policy, &timeout(), true, false));
    assert!(!should_retry(&policy, &connect(), true, true));
    assert!(is_idempotent(&Method::PUT) && !is_idempotent(&Method::POST));
}

/// An ask to switch protocols goes on only when the rule allows every
/// protocol it offers; WebSocket by default.
#[test]
fn upgrades_pass_only_when_the_rule_allows_them() {
    let asking = |upgrade: &'static str| {
        let mut h = HeaderMap::new();
        h.insert(header::UPGRADE, HeaderValue::from_static(upgrade));
        h
    };
    let websocket = ["websocket".to_owned()];
    assert!(upgrade_allowed(&asking("WebSocket"), &websocket));
    assert!(upgrade_allowed(&asking("websocket/13"), &websocket));
    assert!(!upgrade_allowed(&asking("h2c"), &websocket));
    assert!(!upgrade_allowed(&asking("websocket, h2c"), &websocket));
    assert!(
        !upgrade_allowed(&asking(" , "), &websocket),
        "nothing offered"
    );
    assert!(!upgrade_allowed(&HeaderMap::new(), &websocket));
    assert!(!upgrade_allowed(&asking("websocket"), &[]));

    // The table's rules take the default: a WebSocket ask passes, an h2c
    // one is taken out with `Connection`.
    let table = table();
    let rule = route(&table, "front", &parts("/"), 0).unwrap().rule;
    let client = HeaderValue::from_static("10.0.0.9");
    for (upgrade, passes) in [("websocket", true), ("h2c", false)] {
        let mut p = parts("/");
        p.extensions.insert(server::UpgradeRequested);
        p.headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("Upgrade, HTTP2-Settings"),
        );
        p.headers
            .insert(header::UPGRADE, HeaderValue::from_static(upgrade));
        p.headers.insert(
            "http2-settings",
            HeaderValue::from_static("AAMAAABkAAQAAP__"),
        );
        upstream_head(&mut p, rule, Protocol::Http, &client);
        let h = &p.headers;
        assert_eq!(h.contains_key(header::UPGRADE), passes, "{upgrade}");
        assert_eq!(h.contains_key(header::CONNECTION), passes, "{upgrade}");
        assert!(!h.contains_key("http2-settings"), "{upgrade}");
    }
}

/// Service `web` with endpoints `(name, zone, health)`, compiled for a
/// node in `zone`.
fn zoned(zone: Option<&str>, endpoints: &[(&str, &str, pb::Health)]) -> Table {
    let mut config = NodeConfig::default();
    let mut kinds = vec![pb::resource::Kind::Service(pb::Service {
        name: "web".into(),
        ..Default::default()
    })];
    for (name, z, health) in endpoints {
        kinds.push(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: (*name).into(),
            service: "web".into(),
            address: "127.0.0.1".into(),
            port: 1,
            zone: (*z).into(),
            health: *health as i32,
            ..Default::default()
        }));
    }
    for kind in kinds {
        let raw = pb::Resource {
            kind: Some(kind),
            ..Default::default()
        };
        config.insert(Resource::from_pb(&raw, "test").expect("valid"));
    }
    let zone: Option<std::sync::Arc<str>> = zone.map(std::sync::Arc::from);
    Table::compile(&config, &Services::default(), 1, zone.as_ref())
}

/// The names of the endpoints 100 picks land on.
fn picked(table: &Table) -> std::collections::BTreeSet<String> {
    let pool = &table.upstreams["web"].all;
    (0..100)
        .map(|_| pool.endpoints[pool.pick(None, None).unwrap()].name.clone())
        .collect()
}

#[test]
fn the_nodes_zone_is_preferred_while_it_has_a_routable_endpoint() {
    use pb::Health::{Healthy, Unhealthy};
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect();
    let both = [
        ("a-1", "a", Healthy),
        ("a-2", "a", Healthy),
        ("b-1", "b", Healthy),
    ];
    assert_eq!(picked(&zoned(Some("a"), &both)), names(&["a-1", "a-2"]));
    assert_eq!(picked(&zoned(Some("b"), &both)), names(&["b-1"]));
    // No zone, or a zone no endpoint is in: every endpoint.
    assert_eq!(picked(&zoned(None, &both)), names(&["a-1", "a-2", "b-1"]));
    assert_eq!(
        picked(&zoned(Some("c"), &both)),
        names(&["a-1", "a-2", "b-1"])
    );
    // Its zone's endpoints down: the other zones take over (the panic
    // threshold, on the whole service, is not reached: 2 of 4 are up).
    let a_down = [
        ("a-1", "a", Unhealthy),
        ("a-2", "a", Unhealthy),
        ("b-1", "b", Healthy),
        ("b-2", "b", Healthy),
    ];
    assert_eq!(picked(&zoned(Some("a"), &a_down)), names(&["b-1", "b-2"]));
}
