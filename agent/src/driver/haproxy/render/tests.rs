use switchyard::pb;

use super::*;
use crate::state::Store;
use crate::testing::{endpoint, listener, route, service, snapshot};

fn sockets() -> Sockets {
    Sockets {
        stats: "/tmp/stats.sock".into(),
    }
}

fn config(resources: Vec<pb::Resource>) -> NodeConfig {
    let mut store = Store::new();
    (*store.apply_snapshot(snapshot(1, resources)).expect("valid")).clone()
}

fn web() -> Vec<pb::Resource> {
    vec![
        service("web", 1),
        endpoint("web-1", "web", 1),
        route("web", "web", 1),
        listener("front", "127.0.0.1", 8080, "web", 1),
    ]
}

#[test]
fn a_listener_becomes_a_frontend_and_its_rule_a_backend() {
    let r = render(&config(web()), &sockets()).unwrap();
    for line in [
        "  master-worker",
        "  stats socket /tmp/stats.sock mode 600 level admin expose-fd listeners",
        "frontend f.front",
        "  bind 127.0.0.1:8080",
        "  mode http",
        "  use_backend r.web.0.0",
        "  default_backend sy.no-route",
        "backend r.web.0.0",
        "  balance roundrobin",
        "  server web-1 10.0.0.1:8080 weight 1",
    ] {
        assert!(
            r.text.lines().any(|l| l == line),
            "{line:?} missing in\n{}",
            r.text
        );
    }
    assert!(!r.skeleton.contains("server web-1"), "{}", r.skeleton);
    assert_eq!(r.backends["r.web.0.0"]["web-1"].state, State::Ready);
}

#[test]
fn health_changes_only_servers_and_drain_is_weight_zero_in_the_file() {
    let mut c = config(web());
    let before = render(&c, &sockets()).unwrap();
    std::sync::Arc::make_mut(c.endpoints.get_mut("web-1").unwrap()).health = Health::Draining;
    let after = render(&c, &sockets()).unwrap();
    assert_eq!(before.skeleton, after.skeleton, "no structural change");
    assert_eq!(after.backends["r.web.0.0"]["web-1"].state, State::Drain);
    assert!(
        after.text.contains("server web-1 10.0.0.1:8080 weight 0"),
        "{}",
        after.text
    );
}

#[test]
fn below_the_panic_threshold_unhealthy_servers_stay_in_service() {
    let mut resources = web();
    resources.push(endpoint("web-2", "web", 1));
    let mut c = config(resources);
    std::sync::Arc::make_mut(c.endpoints.get_mut("web-1").unwrap()).health = Health::Unhealthy;
    let r = render(&c, &sockets()).unwrap();
    // One of two healthy: 50% is not below the default threshold of 50%.
    assert_eq!(r.backends["r.web.0.0"]["web-1"].state, State::Maint);
    std::sync::Arc::make_mut(c.endpoints.get_mut("web-2").unwrap()).health = Health::Unhealthy;
    let r = render(&c, &sockets()).unwrap();
    assert_eq!(
        r.backends["r.web.0.0"]["web-1"].state,
        State::Ready,
        "panic"
    );
}

#[test]
fn a_weighted_split_draws_once_per_rule() {
    let mut resources = web();
    resources.push(service("beta", 1));
    resources.push(endpoint("beta-1", "beta", 1));
    let mut r = route("web", "web", 1);
    if let Some(pb::resource::Kind::Route(route)) = &mut r.kind {
        let dests = &mut route.rules[0].action.as_mut().unwrap().destinations;
        dests[0].weight = 90;
        dests.push(pb::WeightedDestination {
            service: "beta".into(),
            weight: 10,
            ..Default::default()
        });
    }
    resources[2] = r;
    let text = render(&config(resources), &sockets()).unwrap().text;
    assert!(
        text.contains("http-request set-var(txn.sy_r0) rand(100)"),
        "{text}"
    );
    assert!(
        text.contains("use_backend r.web.0.0 if { var(txn.sy_r0) -m int ge 0 } { var(txn.sy_r0) -m int lt 90 }"),
        "{text}"
    );
    assert!(
        text.contains("use_backend r.web.0.1 if { var(txn.sy_r0) -m int ge 90 } { var(txn.sy_r0) -m int lt 100 }"),
        "{text}"
    );
}

#[test]
fn what_haproxy_cannot_express_is_refused_naming_the_field() {
    let mut resources = web();
    if let Some(pb::resource::Kind::Service(s)) = &mut resources[0].kind {
        s.outlier_detection = Some(pb::OutlierDetection {
            consecutive_5xx: 5,
            ..Default::default()
        });
        s.circuit_breaker = Some(pb::CircuitBreaker {
            max_retries: 3,
            ..Default::default()
        });
    }
    let refused = render(&config(resources), &sockets())
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("service/web.outlier_detection"),
        "{refused}"
    );
    assert!(
        refused.contains("service/web.circuit_breaker.max_retries"),
        "{refused}"
    );
}

#[test]
fn quoting_keeps_quotes_and_percent_literal() {
    assert_eq!(q("it's"), "'it'\\''s'");
    assert_eq!(lf("100%"), "'100%%'");
    assert_eq!(
        replace_path("/api", "/"),
        "  http-request replace-path '^/api/?(.*)' '/\\1'"
    );
}
