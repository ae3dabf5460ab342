use switchyard::pb;

use super::*;

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn service(text: &str) -> Result<pb::Service, FieldError> {
    from_value(yaml(text), "switchyard.v1.Service")
}

#[test]
fn enum_values_read_in_any_spelling_and_print_short() {
    for spelling in [
        "least_request",
        "least-request",
        "LEAST_REQUEST",
        "LB_POLICY_LEAST_REQUEST",
    ] {
        let s = service(&format!("{{name: web, lbPolicy: {spelling}}}")).unwrap();
        assert_eq!(s.lb_policy, pb::LbPolicy::LeastRequest as i32, "{spelling}");
    }
    let printed = to_value(
        &pb::Service {
            name: "web".into(),
            lb_policy: pb::LbPolicy::RingHash as i32,
            ..Default::default()
        },
        "switchyard.v1.Service",
    );
    assert_eq!(printed, yaml("{name: web, lbPolicy: ring_hash}"));
}

#[test]
fn an_unknown_enum_value_lists_the_choices() {
    let e = service("{name: web, lbPolicy: fastest}").unwrap_err();
    assert_eq!(e.path, "lbPolicy");
    assert_eq!(
        e.reason,
        "unknown value `fastest`; expected one of round_robin, least_request, random, ring_hash, maglev"
    );
}

#[test]
fn snake_case_field_names_are_accepted() {
    let s = service("{name: web, lb_policy: maglev, hash_policy: {header: x-user}}").unwrap();
    assert_eq!(s.lb_policy, pb::LbPolicy::Maglev as i32);
    assert_eq!(
        s.hash_policy.unwrap().source,
        Some(pb::hash_policy::Source::Header("x-user".into()))
    );
}

#[test]
fn a_misspelt_field_gets_a_suggestion_with_its_path() {
    let e = service("{name: web, healthCheck: {intervall: 5s}}").unwrap_err();
    assert_eq!(e.path, "healthCheck.intervall");
    assert_eq!(
        e.reason,
        "unknown field `intervall`; did you mean `interval`?"
    );
}

#[test]
fn durations_read_as_seconds_or_with_units() {
    let timeout = |text: &str| {
        service(&format!("{{name: web, connectTimeout: {text}}}"))
            .map(|s| s.connect_timeout.unwrap())
    };
    assert_eq!(
        timeout("1.5s").unwrap(),
        prost_types::Duration {
            seconds: 1,
            nanos: 500_000_000
        }
    );
    assert_eq!(
        timeout("250ms").unwrap(),
        prost_types::Duration {
            seconds: 0,
            nanos: 250_000_000
        }
    );
    assert_eq!(timeout("2m").unwrap().seconds, 120);
    let e = timeout("soon").unwrap_err();
    assert_eq!(e.path, "connectTimeout");
    assert!(e.reason.contains("write it like 1.5s"), "{}", e.reason);
}

#[test]
fn type_errors_name_the_nested_field() {
    let e = from_value::<pb::Route>(
        yaml("{name: r, rules: [{action: {destinations: [{service: web, weight: heavy}]}}]}"),
        "switchyard.v1.Route",
    )
    .unwrap_err();
    assert_eq!(e.path, "rules[0].action.destinations[0].weight");
}

#[test]
fn output_keeps_declaration_order_sorted_maps_and_explicit_zeroes() {
    let endpoint = pb::Endpoint {
        name: "web-1".into(),
        labels: [("zone", "b"), ("app", "web"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        service: "web".into(),
        address: "10.0.0.1".into(),
        port: 8080,
        ..Default::default()
    };
    let Value::Mapping(doc) = to_value(&endpoint, "switchyard.v1.Endpoint") else {
        panic!("a mapping")
    };
    let keys: Vec<&str> = doc.keys().filter_map(Value::as_str).collect();
    assert_eq!(keys, ["name", "labels", "service", "address", "port"]);
    let Some(Value::Mapping(labels)) = doc.get("labels") else {
        panic!("labels")
    };
    let keys: Vec<&str> = labels.keys().filter_map(Value::as_str).collect();
    assert_eq!(keys, ["app", "version", "zone"]);

    // An optional field set to its default is kept: 0 disables the panic threshold.
    let s = pb::Service {
        name: "web".into(),
        panic_threshold_percent: Some(0),
        ..Default::default()
    };
    let value = to_value(&s, "switchyard.v1.Service");
    assert_eq!(value, yaml("{name: web, panicThresholdPercent: 0}"));
    assert_eq!(
        from_value::<pb::Service>(value, "switchyard.v1.Service").unwrap(),
        s
    );
}

/// A rule's upgrade allow-list reads and prints back, an empty one (no
/// switch allowed) included: it is not the same as leaving it out.
#[test]
fn upgrade_allow_lists_round_trip_even_empty() {
    let route = |text: &str| from_value::<pb::Route>(yaml(text), "switchyard.v1.Route").unwrap();
    let allow = route(
        "{name: r, rules: [{action: {destinations: [{service: web}], upgrades: {allow: [websocket, foo]}}}]}",
    );
    let action = allow.rules[0].action.as_ref().unwrap();
    assert_eq!(
        action.upgrades.as_ref().unwrap().allow,
        vec!["websocket", "foo"]
    );
    let none =
        route("{name: r, rules: [{action: {destinations: [{service: web}], upgrades: {}}}]}");
    let unset = route("{name: r, rules: [{action: {destinations: [{service: web}]}}]}");
    assert_eq!(
        none.rules[0].action.as_ref().unwrap().upgrades,
        Some(pb::Upgrades::default())
    );
    assert_eq!(unset.rules[0].action.as_ref().unwrap().upgrades, None);
    for r in [allow, none, unset] {
        let back = to_value(&r, "switchyard.v1.Route");
        assert_eq!(
            from_value::<pb::Route>(back, "switchyard.v1.Route").unwrap(),
            r
        );
    }
}
