use super::*;

fn route_with_regex(re: &str) -> pb::Route {
    pb::Route {
        name: "web".into(),
        rules: vec![pb::RouteRule {
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Regex(re.into())),
                }),
                ..Default::default()
            }],
            action: Some(pb::RouteAction {
                destinations: vec![pb::WeightedDestination {
                    service: "api".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
}

#[test]
fn valid_route_gets_defaults_and_compiled_regex() {
    let r = Route::from_pb(&route_with_regex("/v[0-9]+/.*"), "route").unwrap();
    let rule = &r.rules[0];
    assert_eq!(
        rule.action.destinations[0].weight, 1,
        "unset weights mean 1"
    );
    assert_eq!(rule.action.timeout, Some(Duration::from_secs(15)));
    match &rule.matches[0].path {
        Some(PathMatch::Regex(re)) => assert!(re.is_match("/v2/users")),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(
        Resource::Route(r).references(),
        vec![(
            Ref::new(Kind::Service, "api"),
            "rules[0].action.destinations[0].service".to_string()
        )]
    );
}

/// A rule lets WebSocket switch through unless its `upgrades` say
/// otherwise; the list is lowercased, bounded, and never holds `h2c`.
#[test]
fn upgrades_default_to_websocket_and_refuse_h2c() {
    let mut pb_route = route_with_regex("/.*");
    let r = Route::from_pb(&pb_route, "route").unwrap();
    assert_eq!(r.rules[0].action.upgrades, vec!["websocket"]);

    let action = pb_route.rules[0].action.as_mut().unwrap();
    action.upgrades = Some(pb::Upgrades { allow: vec![] });
    let r = Route::from_pb(&pb_route, "route").unwrap();
    assert!(r.rules[0].action.upgrades.is_empty(), "set but empty: none");

    let action = pb_route.rules[0].action.as_mut().unwrap();
    action.upgrades = Some(pb::Upgrades {
        allow: vec!["WebSocket".into(), "foo".into()],
    });
    let r = Route::from_pb(&pb_route, "route").unwrap();
    assert_eq!(r.rules[0].action.upgrades, vec!["websocket", "foo"]);

    let action = pb_route.rules[0].action.as_mut().unwrap();
    action.upgrades = Some(pb::Upgrades {
        allow: vec!["H2C".into(), String::new(), "foo/2".into(), "x".repeat(65)],
    });
    let err = Route::from_pb(&pb_route, "r").unwrap_err();
    let got: Vec<String> = err.violations.iter().map(ToString::to_string).collect();
    let at = "r.rules[0].action.upgrades.allow";
    assert_eq!(
        got,
        vec![
            format!(
                "{at}[0]: h2c is never relayed: HTTP/2 cleartext is set up with prior \
                 knowledge, which HTTP listeners accept, not by upgrade"
            ),
            format!("{at}[1]: must not be empty"),
            format!(
                "{at}[2]: \"foo/2\" is not a protocol name: use letters, digits and \
                 !#$%&'*+-.^_`|~ (no version)"
            ),
            format!("{at}[3]: a protocol name must be at most 64 characters long, not 65"),
        ]
    );

    let action = pb_route.rules[0].action.as_mut().unwrap();
    action.upgrades = Some(pb::Upgrades {
        allow: (0..17).map(|i| format!("p{i}")).collect(),
    });
    let err = Route::from_pb(&pb_route, "r").unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("{at}: has 17 entries; at most 16 are allowed")
    );
}

#[test]
fn bad_regex_names_its_path() {
    let err = Route::from_pb(&route_with_regex("(["), "routes[0]").unwrap_err();
    assert_eq!(err.violations.len(), 1);
    assert_eq!(
        err.violations[0].field,
        "routes[0].rules[0].matches[0].path.regex"
    );
    // One line: the pattern quoted, then the regex crate's explanation
    // without its multi-line drawing of the pattern.
    assert_eq!(
        err.violations[0].reason,
        r#""([" is not a valid regular expression: unclosed character class"#
    );
}

#[test]
fn every_problem_is_reported() {
    let e = pb::Endpoint {
        name: "Bad Name".into(),
        service: "".into(),
        address: "not an address!".into(),
        port: 0,
        weight: 20_000,
        ..Default::default()
    };
    let err = Endpoint::from_pb(&e, "e").unwrap_err();
    let fields: Vec<_> = err.violations.iter().map(|v| v.field.as_str()).collect();
    assert_eq!(
        fields,
        ["e.name", "e.service", "e.address", "e.port", "e.weight"]
    );
}

#[test]
fn listener_target_must_fit_protocol() {
    let l = pb::Listener {
        name: "l".into(),
        port: 8080,
        protocol: pb::Protocol::Tcp as i32,
        target: Some(pb::listener::Target::Route("r".into())),
        ..Default::default()
    };
    let err = Listener::from_pb(&l, "l").unwrap_err();
    assert_eq!(err.violations[0].field, "l.route");
}

#[test]
fn ring_hash_requires_a_hash_policy() {
    let s = pb::Service {
        name: "s".into(),
        lb_policy: pb::LbPolicy::RingHash as i32,
        ..Default::default()
    };
    let err = Service::from_pb(&s, "s").unwrap_err();
    assert_eq!(err.violations[0].field, "s.hash_policy");
    let s = pb::Service {
        hash_policy: Some(pb::HashPolicy {
            source: Some(pb::hash_policy::Source::Header("X-User".into())),
        }),
        ..s
    };
    let svc = Service::from_pb(&s, "s").unwrap();
    assert_eq!(
        svc.balance,
        Balance::RingHash(HashOn::Header("x-user".into()))
    );
}
