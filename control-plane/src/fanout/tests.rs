use super::*;

fn res(kind: pb::resource::Kind) -> pb::Resource {
    pb::Resource {
        kind: Some(kind),
        ..Default::default()
    }
}

fn service(name: &str, revision: u64) -> pb::Resource {
    res(pb::resource::Kind::Service(pb::Service {
        name: name.into(),
        revision,
        ..Default::default()
    }))
}

fn endpoint(name: &str, service: &str, node: &str, revision: u64) -> pb::Resource {
    res(pb::resource::Kind::Endpoint(pb::Endpoint {
        name: name.into(),
        service: service.into(),
        node: node.into(),
        revision,
        ..Default::default()
    }))
}

fn route(name: &str, services: &[&str], revision: u64) -> pb::Resource {
    res(pb::resource::Kind::Route(pb::Route {
        name: name.into(),
        revision,
        rules: vec![pb::RouteRule {
            matches: vec![],
            action: Some(pb::RouteAction {
                destinations: services
                    .iter()
                    .map(|s| pb::WeightedDestination {
                        service: s.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }),
        }],
        ..Default::default()
    }))
}

fn listener(name: &str, route: &str, selector: &[(&str, &str)], revision: u64) -> pb::Resource {
    res(pb::resource::Kind::Listener(pb::Listener {
        name: name.into(),
        revision,
        target: Some(pb::listener::Target::Route(route.into())),
        node_selector: selector
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    }))
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn state() -> State {
    State::from_dump(store::Dump {
        revision: 9,
        horizon: 0,
        resources: vec![
            service("web", 1),
            service("api", 2),
            service("db", 3),
            endpoint("web-1", "web", "n1", 4),
            endpoint("api-1", "api", "n2", 5),
            endpoint("db-1", "db", "n3", 6),
            route("front", &["web", "api"], 7),
            listener("edge", "front", &[("role", "edge")], 8),
        ],
    })
}

fn names(view: &View) -> Vec<String> {
    view.keys().map(Ref::to_string).collect()
}

#[test]
fn selected_node_gets_listener_route_services_and_endpoints() {
    let view = state().scope("n9", &labels(&[("role", "edge")]));
    assert_eq!(
        names(&view),
        [
            "service/api",
            "service/web",
            "endpoint/api-1",
            "endpoint/web-1",
            "route/front",
            "listener/edge"
        ]
    );
    assert_eq!(view[&Ref::new(Kind::Route, "front")], 7);
}

#[test]
fn unselected_node_gets_only_what_it_owns() {
    let view = state().scope("n3", &labels(&[("role", "db")]));
    assert_eq!(names(&view), ["service/db", "endpoint/db-1"]);
    assert!(state().scope("n4", &Labels::new()).is_empty());
}

#[test]
fn owners_get_their_endpoints_and_services_not_their_peers() {
    let mut with_peer = state();
    with_peer.upsert(endpoint("db-2", "db", "n4", 10));
    let view = with_peer.scope("n3", &labels(&[("role", "db")]));
    assert_eq!(
        names(&view),
        ["service/db", "endpoint/db-1"],
        "db-2 is n4's"
    );
}

#[test]
fn an_owner_inside_its_selected_part_shares_it() {
    let s = state();
    let edge = labels(&[("role", "edge")]);
    let owner = s.scope("n1", &edge);
    let other = s.scope("n9", &edge);
    assert!(
        Arc::ptr_eq(&owner, &other),
        "web-1 is already selected: one view"
    );
}

#[test]
fn delta_has_changed_upserts_and_removals() {
    let before = state();
    let from = before.scope("n9", &labels(&[("role", "edge")]));
    // The route drops "api" and an endpoint of web changes.
    let changes = vec![
        store::Change {
            revision: 10,
            op: Op::Upsert,
            target: Ref::new(Kind::Route, "front"),
            resource: Some(route("front", &["web"], 10)),
            author: None,
        },
        store::Change {
            revision: 10,
            op: Op::Upsert,
            target: Ref::new(Kind::Endpoint, "web-1"),
            resource: Some(endpoint("web-1", "web", "n1", 10)),
            author: None,
        },
        store::Change {
            revision: 11,
            op: Op::Upsert,
            target: Ref::new(Kind::Endpoint, "db-1"),
            resource: Some(endpoint("db-1", "db", "n3", 11)),
            author: None,
        },
    ];
    let after = before.apply(changes);
    assert_eq!(after.revision, 11);
    let to = after.scope("n9", &labels(&[("role", "edge")]));
    let delta = after.delta(9, &from, &to).unwrap();
    assert_eq!((delta.from_revision, delta.to_revision), (9, 11));
    let upserts: Vec<_> = delta
        .upserts
        .iter()
        .map(|r| pb_ref(r).unwrap().to_string())
        .collect();
    assert_eq!(upserts, ["endpoint/web-1", "route/front"]);
    let removals: Vec<_> = delta.removals.iter().map(|r| r.name.clone()).collect();
    assert_eq!(removals, ["api", "api-1"]);
    // Nothing in scope changed: no delta at all.
    assert!(after.delta(11, &to, &to).is_none());
}

#[test]
fn moving_an_endpoint_reindexes_it() {
    let s = state().apply(vec![store::Change {
        revision: 10,
        op: Op::Upsert,
        target: Ref::new(Kind::Endpoint, "web-1"),
        resource: Some(endpoint("web-1", "api", "n2", 10)),
        author: None,
    }]);
    let n1 = s.scope("n1", &Labels::new());
    assert!(n1.is_empty(), "n1 no longer owns web-1: {n1:?}");
    let n2 = s.scope("n2", &Labels::new());
    assert_eq!(
        names(&n2),
        ["service/api", "endpoint/api-1", "endpoint/web-1"]
    );
    let gone = s.apply(vec![store::Change {
        revision: 11,
        op: Op::Delete,
        target: Ref::new(Kind::Endpoint, "api-1"),
        resource: None,
        author: None,
    }]);
    assert_eq!(
        names(&gone.scope("n2", &Labels::new())),
        ["service/api", "endpoint/web-1"]
    );
}

#[test]
fn shared_deltas_equal_computed_ones() {
    let before = state();
    let edge = labels(&[("role", "edge")]);
    let from = before.scope("n9", &edge);
    let owner_from = before.scope("n3", &edge);
    let after = before.apply(vec![store::Change {
        revision: 10,
        op: Op::Upsert,
        target: Ref::new(Kind::Endpoint, "web-1"),
        resource: Some(endpoint("web-1", "web", "n1", 10)),
        author: None,
    }]);
    let (to, shared) = after.scope_shared("n9", &edge);
    assert!(shared);
    let once = after.shared_delta(true, 9, &from, &to);
    let twice = after.shared_delta(true, 9, &from, &to);
    assert_eq!(once, after.delta(9, &from, &to));
    assert_eq!(once, twice);
    assert_eq!(once.unwrap().upserts.len(), 1);
    // n3 owns db-1 outside its selected part: its own scope, computed afresh.
    let (owner_to, shared) = after.scope_shared("n3", &edge);
    assert!(!shared && !Arc::ptr_eq(&owner_to, &to));
    assert_eq!(
        after.shared_delta(false, 9, &owner_from, &owner_to),
        after.delta(9, &owner_from, &owner_to)
    );
}
