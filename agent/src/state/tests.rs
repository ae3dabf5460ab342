use std::net::IpAddr;

use switchyard::resource::Kind;

use super::*;
use crate::testing::{delta, endpoint, listener, route, service, snapshot, web};

fn names<T>(map: &BTreeMap<String, T>) -> Vec<&str> {
    map.keys().map(String::as_str).collect()
}

fn invalid(result: Result<Candidate, Error>) -> String {
    match result {
        Err(Error::Invalid(e)) => e.to_string(),
        Err(other) => panic!("expected a validation error, got {other:?}"),
        Ok(c) => panic!("expected a validation error, got revision {}", c.revision()),
    }
}

#[test]
fn snapshot_replaces_everything() {
    let mut store = Store::new();
    assert_eq!(store.revision(), 0);
    assert!(store.config().is_empty());

    let config = store.apply_snapshot(web(5)).unwrap();
    assert_eq!(config.revision, 5);
    assert_eq!(names(&config.services), ["web"]);
    assert_eq!(names(&config.endpoints), ["web-1"]);
    assert_eq!(names(&config.routes), ["web"]);
    assert_eq!(names(&config.listeners), ["web"]);
    assert_eq!(config.listeners["web"].port, 8080);

    let config = store
        .apply_snapshot(snapshot(9, [service("api", 9)]))
        .unwrap();
    assert_eq!(config.revision, 9);
    assert_eq!(names(&config.services), ["api"]);
    assert!(config.endpoints.is_empty() && config.listeners.is_empty());
    assert_eq!(store.revision(), 9);
    assert!(Arc::ptr_eq(&config, &store.config()));
}

#[test]
fn inventory_lists_every_resource_with_its_revision() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    store
        .apply_delta(delta(5, 7, [endpoint("web-2", "web", 7)], []))
        .unwrap();
    let inventory: Vec<(String, u64)> = store
        .inventory()
        .iter()
        .map(|rv| {
            let r = Ref::from_pb(rv.r#ref.as_ref().unwrap(), "ref").unwrap();
            (r.to_string(), rv.revision)
        })
        .collect();
    assert_eq!(
        inventory,
        [
            ("service/web".to_string(), 5),
            ("endpoint/web-1".to_string(), 5),
            ("endpoint/web-2".to_string(), 7),
            ("route/web".to_string(), 5),
            ("listener/web".to_string(), 5),
        ]
    );
}

#[test]
fn delta_upserts_and_removes() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    let mut moved = endpoint("web-1", "web", 8);
    if let Some(pb::resource::Kind::Endpoint(e)) = &mut moved.kind {
        e.port = 9090;
    }
    let config = store
        .apply_delta(delta(
            5,
            8,
            [moved, endpoint("web-2", "web", 8)],
            [(Kind::Listener, "web")],
        ))
        .unwrap();
    assert_eq!(config.revision, 8);
    assert_eq!(names(&config.endpoints), ["web-1", "web-2"]);
    assert_eq!(config.endpoints["web-1"].port, 9090);
    assert_eq!(config.endpoints["web-1"].revision, 8);
    assert!(config.listeners.is_empty());
    assert_eq!(store.revision(), 8);
    // What is held as sent follows too, for the next Hello and the disk.
    let saved = pb::Snapshot::decode(store.encoded_snapshot().as_slice()).unwrap();
    assert_eq!(saved.revision, 8);
    assert_eq!(saved.endpoints.len(), 2);
    assert!(saved.listeners.is_empty());
}

#[test]
fn removal_of_something_not_held_is_ignored() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    let config = store
        .apply_delta(delta(
            5,
            6,
            [],
            [(Kind::Endpoint, "nope"), (Kind::Service, "gone-already")],
        ))
        .unwrap();
    assert_eq!(config.revision, 6);
    assert_eq!(names(&config.endpoints), ["web-1"]);
    assert_eq!(store.inventory().len(), 4);
}

#[test]
fn empty_delta_moves_the_revision() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    assert_eq!(store.apply_delta(delta(5, 5, [], [])).unwrap().revision, 5);
    assert_eq!(store.apply_delta(delta(5, 6, [], [])).unwrap().revision, 6);
}

#[test]
fn delta_from_another_revision_is_a_gap() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    let err = store
        .apply_delta(delta(4, 6, [service("x", 6)], []))
        .unwrap_err();
    assert_eq!(err, Error::Gap { have: 5, from: 4 });
    assert!(err.is_gap());
    assert_eq!(
        err.to_string(),
        "delta from revision 4 does not apply at revision 5"
    );
    assert_eq!(store.revision(), 5);
    assert!(!store.config().services.contains_key("x"));
}

#[test]
fn delta_going_backwards_is_refused() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    let msg = invalid(store.prepare_delta(delta(5, 3, [], [])));
    assert!(
        msg.contains("to_revision: 3 is below from_revision 5"),
        "{msg}"
    );
}

#[test]
fn invalid_resource_is_reported_by_name_and_field() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    let before = store.config();

    let bad = listener("admin", "not-an-ip", 0, "web", 6);
    let msg = invalid(store.prepare_delta(delta(5, 6, [bad], [])));
    assert!(
        msg.contains(r#"listener/admin.address: "not-an-ip" is not an IP address"#),
        "{msg}"
    );
    assert!(
        msg.contains("listener/admin.port: must be in 1..65535, not 0"),
        "{msg}"
    );

    let msg = invalid(store.prepare_delta(delta(
        5,
        6,
        [pb::Resource {
            kind: None,
            ..Default::default()
        }],
        [],
    )));
    assert!(
        msg.contains("upserts[0]: must hold a service, endpoint, route or listener"),
        "{msg}"
    );

    let msg = invalid(store.prepare_snapshot(snapshot(7, [service("web", 7), service("web", 7)])));
    assert!(msg.contains("service/web: listed twice"), "{msg}");

    // Nothing changed.
    assert_eq!(store.revision(), 5);
    assert!(Arc::ptr_eq(&before, &store.config()));
}

#[test]
fn missing_targets_are_refused() {
    let store = Store::new();
    let msg = invalid(store.prepare_snapshot(snapshot(
        3,
        [
            route("web", "web", 3),
            listener("web", "127.0.0.1", 80, "nope", 3),
        ],
    )));
    assert!(
        msg.contains(r#"listener/web.route: route "nope" is not in this node's configuration"#),
        "{msg}"
    );
    assert!(
        msg.contains(
            r#"route/web.rules[0].action.destinations[0].service: service "web" is not in this node's configuration"#
        ),
        "{msg}"
    );
}

#[test]
fn removing_what_a_listener_needs_is_refused() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    let msg = invalid(store.prepare_delta(delta(5, 6, [], [(Kind::Route, "web")])));
    assert!(msg.contains(r#"listener/web.route: route "web""#), "{msg}");
    assert_eq!(store.revision(), 5);
}

#[test]
fn overlapping_binds_are_refused_and_the_previous_config_stays() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    let before = store.config();

    let msg = invalid(store.prepare_delta(delta(
        5,
        6,
        [listener("all", "0.0.0.0", 8080, "web", 6)],
        [],
    )));
    assert!(
        msg.contains(
            r#"listener "web" binds 127.0.0.1:8080, which overlaps listener "all" on 0.0.0.0:8080"#
        ),
        "{msg}"
    );
    assert_eq!(store.revision(), 5);
    assert!(Arc::ptr_eq(&before, &store.config()));
    assert_eq!(names(&store.config().listeners), ["web"]);

    // Same address, same port.
    let msg = invalid(store.prepare_delta(delta(
        5,
        6,
        [listener("web-2", "127.0.0.1", 8080, "web", 6)],
        [],
    )));
    assert!(
        msg.contains(r#"listener "web-2""#) && msg.contains(r#"listener "web""#),
        "{msg}"
    );

    // Different ports, or different specific addresses, are fine.
    let ok = store
        .apply_delta(delta(
            5,
            6,
            [
                listener("other-port", "0.0.0.0", 8081, "web", 6),
                listener("other-addr", "127.0.0.2", 8080, "web", 6),
            ],
            [],
        ))
        .unwrap();
    assert_eq!(ok.listeners.len(), 3);
}

#[test]
fn overlap_rules() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let yes = [
        ("127.0.0.1", "127.0.0.1"),
        ("0.0.0.0", "10.1.2.3"),
        ("::", "127.0.0.1"),
        ("::", "::1"),
        ("0.0.0.0", "::"),
        ("::ffff:127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
    ];
    for (a, b) in yes {
        assert!(overlaps(ip(a), ip(b)), "{a} {b}");
        assert!(overlaps(ip(b), ip(a)), "{b} {a}");
    }
    let no = [
        ("127.0.0.1", "127.0.0.2"),
        ("0.0.0.0", "::1"),
        ("::1", "::2"),
    ];
    for (a, b) in no {
        assert!(!overlaps(ip(a), ip(b)), "{a} {b}");
        assert!(!overlaps(ip(b), ip(a)), "{b} {a}");
    }
}

#[test]
fn a_refused_delta_does_not_move_the_revision_so_the_next_one_applies() {
    let mut store = Store::new();
    store.apply_snapshot(web(5)).unwrap();
    store
        .apply_delta(delta(
            5,
            6,
            [listener("dup", "127.0.0.1", 8080, "web", 6)],
            [],
        ))
        .unwrap_err();
    // The control plane's next Delta starts from the agent's previous revision.
    let config = store
        .apply_delta(delta(
            5,
            7,
            [listener("ok", "127.0.0.1", 9090, "web", 7)],
            [],
        ))
        .unwrap();
    assert_eq!(config.revision, 7);
    assert_eq!(names(&config.listeners), ["ok", "web"]);
}

/// What is saved is exactly the Snapshot the held resources make, in the
/// Snapshot's own order (by kind, then name), whatever order they came in.
#[test]
fn the_encoded_snapshot_is_the_snapshot_of_what_is_held() {
    let mut store = Store::new();
    store
        .apply_snapshot(snapshot(
            7,
            [
                listener("web", "127.0.0.1", 8080, "web", 7),
                endpoint("web-2", "web", 6),
                route("web", "web", 5),
                endpoint("web-1", "web", 7),
                service("web", 3),
            ],
        ))
        .unwrap();
    let expected = snapshot(
        7,
        [
            service("web", 3),
            endpoint("web-1", "web", 7),
            endpoint("web-2", "web", 6),
            route("web", "web", 5),
            listener("web", "127.0.0.1", 8080, "web", 7),
        ],
    );
    assert_eq!(store.encoded_snapshot(), expected.encode_to_vec());

    let candidate = store
        .prepare_delta(delta(7, 8, [service("api", 8)], []))
        .unwrap();
    let saved = pb::Snapshot::decode(candidate.encoded_snapshot().as_slice()).unwrap();
    assert_eq!(saved.revision, 8);
    let names: Vec<&str> = saved.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["api", "web"]);
}
