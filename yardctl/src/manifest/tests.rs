use super::*;

const MIXED: &str = "\
kind: Service
name: web
labels: {team: shop}
spec: {protocol: http, lbPolicy: least_request}
---
# comments and empty documents are fine
---
kind: endpoint
name: web-1
spec: {service: web, address: 10.0.0.1, port: 8080, labels: {version: v1}}
";

#[test]
fn several_documents_of_mixed_kinds_keep_their_positions() {
    let manifests = parse(MIXED, "web.yaml").unwrap();
    let found: Vec<(String, String)> = manifests
        .iter()
        .map(|m| (m.target.to_string(), m.source.to_string()))
        .collect();
    assert_eq!(
        found,
        [
            ("service/web".into(), "web.yaml, document 1".into()),
            ("endpoint/web-1".into(), "web.yaml, document 3".into()),
        ]
    );
    let Some(Resource::Service(s)) = &manifests[0].resource.kind else {
        panic!("a service")
    };
    assert_eq!(s.labels["team"], "shop");
    assert_eq!(s.lb_policy, pb::LbPolicy::LeastRequest as i32);
    let Some(Resource::Endpoint(e)) = &manifests[1].resource.kind else {
        panic!("an endpoint")
    };
    assert_eq!(e.labels["version"], "v1", "labels may sit in spec");
}

#[test]
fn a_json_list_of_manifests_reads_item_by_item() {
    let text = r#"[{"kind": "Service", "name": "a"}, {"kind": "Service", "name": "b", "spec": {"port": 1}}]"#;
    let e = parse(text, "all.json").unwrap_err();
    assert_eq!(e.exit, crate::Exit::Usage);
    assert!(
        e.message.starts_with(
            "service/b (all.json, document 1, item 2): spec.port: unknown field `port`"
        ),
        "{}",
        e.message
    );
}

#[test]
fn printed_manifests_read_back_to_the_same_resource() {
    let endpoint = pb::Endpoint {
        name: "web-1".into(),
        labels: [("version".to_string(), "v2".to_string())].into(),
        revision: 42,
        service: "web".into(),
        address: "10.0.0.1".into(),
        port: 8080,
        weight: 3,
        node: "edge-1".into(),
        health: pb::Health::Unhealthy as i32,
        health_reason: "HTTP 503".into(),
        health_changed_at: Some(prost_types::Timestamp {
            seconds: 1_700_000_000,
            nanos: 0,
        }),
        ..Default::default()
    };
    let resource = pb::Resource {
        kind: Some(Resource::Endpoint(endpoint.clone())),
        ..Default::default()
    };
    let doc = to_document(&resource);
    let text = to_yaml(std::slice::from_ref(&doc));
    assert!(text.starts_with("kind: Endpoint\nname: web-1\n"), "{text}");
    assert!(text.contains("status:\n  health: unhealthy\n"), "{text}");
    assert!(text.contains("reason: HTTP 503"), "{text}");

    let back = parse(&text, "out.yaml").unwrap();
    let expected = pb::Endpoint {
        // Set by Switchyard: shown, not applied.
        revision: 0,
        health: 0,
        health_reason: String::new(),
        health_changed_at: None,
        ..endpoint
    };
    assert_eq!(back[0].resource.kind, Some(Resource::Endpoint(expected)));
}

#[test]
fn the_last_change_is_shown_beside_the_revision_and_ignored_when_applied() {
    let service = pb::Service {
        name: "web".into(),
        revision: 7,
        protocol: pb::Protocol::Http2 as i32,
        ..Default::default()
    };
    let author = pb::ChangeAuthor {
        principal: "token/alice".into(),
        address: "10.0.0.5:51234".into(),
        at: Some(prost_types::Timestamp {
            seconds: 1_796_407_796,
            nanos: 0,
        }),
    };
    let resource = pb::Resource {
        kind: Some(Resource::Service(service.clone())),
        last_change: Some(author),
    };
    let text = to_yaml(&[to_document(&resource)]);
    assert_eq!(
        text,
        "kind: Service\nname: web\nrevision: 7\nlastChange:\n  principal: token/alice\n  \
         address: 10.0.0.5:51234\n  at: 2026-12-04T18:09:56Z\nspec:\n  protocol: http2\n"
    );
    let json = to_json(&to_document(&resource));
    for printed in [text.as_str(), json.as_str()] {
        let back = parse(printed, "out").unwrap();
        assert_eq!(
            back[0].resource,
            pb::Resource {
                kind: Some(Resource::Service(pb::Service {
                    revision: 0,
                    ..service.clone()
                })),
                last_change: None,
            },
            "{printed}"
        );
    }

    // Without an audit trail (an older control plane), no block at all.
    let plain = pb::Resource {
        kind: Some(Resource::Service(service)),
        last_change: None,
    };
    assert!(!to_yaml(&[to_document(&plain)]).contains("lastChange"));
}

#[test]
fn misplaced_fields_are_refused_with_their_place() {
    let problem = |text: &str| parse(text, "f.yaml").unwrap_err().message;
    assert_eq!(
        problem("kind: Service\nname: web\nspec: {name: web}"),
        "service/web (f.yaml, document 1): spec.name: belongs at the top level of the manifest, beside kind"
    );
    assert_eq!(
        problem("kind: Service\nname: web\nlabels: {a: b}\nspec: {labels: {a: c}}"),
        "service/web (f.yaml, document 1): spec.labels: labels are given twice, at the top level and in spec; keep one"
    );
    assert_eq!(
        problem("kind: Endpoint\nname: e\nspec: {health: healthy}"),
        "endpoint/e (f.yaml, document 1): spec.health: is set by Switchyard (shown under status); leave it out"
    );
    assert_eq!(problem("name: web"), "f.yaml, document 1: kind: required");
    assert_eq!(
        problem("kind: Service\nname: web\nmetadata: {}"),
        "f.yaml, document 1: metadata: unknown field; a manifest has kind, name, labels, spec"
    );
    assert_eq!(
        problem("- just\n- words"),
        "f.yaml, document 1, item 1: a manifest is a mapping with kind, name and spec"
    );
}

#[test]
fn resource_fields_map_to_manifest_paths() {
    assert_eq!(manifest_path("port"), "spec.port");
    assert_eq!(manifest_path("rules[0].action"), "spec.rules[0].action");
    assert_eq!(manifest_path("labels.team"), "labels.team");
    assert_eq!(manifest_path("name"), "name");
    assert_eq!(manifest_path(""), "spec");
}
