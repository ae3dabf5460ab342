use super::*;

fn vars(pairs: &[(&str, &str)]) -> Vars {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[test]
fn substitutes_every_variable() {
    let text = "port: ${A_PORT}\nnode: ${NODE} # ${A_PORT}\ncost: $5\n";
    let out = substitute(
        "f.yaml",
        text,
        &vars(&[("A_PORT", "8080"), ("NODE", "demo")]),
    )
    .unwrap();
    assert_eq!(out, "port: 8080\nnode: demo # 8080\ncost: $5\n");
}

#[test]
fn refuses_unknown_and_unclosed_variables() {
    let err = substitute("f.yaml", "port: ${B_PORT}", &vars(&[("A_PORT", "1")])).unwrap_err();
    assert_eq!(err.to_string(), "f.yaml: unknown variable ${B_PORT}");
    let err = substitute("f.yaml", "a: 1\nport: ${A_PORT", &vars(&[("A_PORT", "1")])).unwrap_err();
    assert_eq!(err.to_string(), "f.yaml: unclosed `${` at byte 11");
}

#[test]
fn port_variables_follow_backend_names() {
    assert_eq!(port_var("web-v1-a"), "WEB_V1_A_PORT");
}

/// Every variable the manifests use is one the demo sets, and the result
/// is the service, its three endpoints, and a route and listener each for
/// round robin and the canary.
#[test]
fn manifests_parse_with_the_demo_variables() {
    let mut vars = vars(&[
        ("NODE", "demo"),
        ("WEB_PORT", "8080"),
        ("CANARY_PORT", "8081"),
    ]);
    for (i, name) in ["web-v1-a", "web-v1-b", "web-v2-a"].iter().enumerate() {
        vars.insert(port_var(name), (9001 + i).to_string());
    }
    let resources = load(&vars).unwrap();
    let names: Vec<String> = resources
        .iter()
        .map(|r| switchyard::resource::pb_ref(r).unwrap().to_string())
        .collect();
    assert_eq!(
        names,
        [
            "service/web",
            "endpoint/web-v1-a",
            "endpoint/web-v1-b",
            "endpoint/web-v2-a",
            "route/web",
            "listener/web",
            "route/canary",
            "listener/canary",
        ]
    );
    let Some(pb::resource::Kind::Endpoint(endpoint)) = &resources[3].kind else {
        panic!("not an endpoint: {:?}", resources[3]);
    };
    assert_eq!(
        (
            endpoint.port,
            endpoint.node.as_str(),
            endpoint.labels["version"].as_str()
        ),
        (9003, "demo", "v2")
    );
    let Some(pb::resource::Kind::Listener(listener)) = &resources[7].kind else {
        panic!("not a listener: {:?}", resources[7]);
    };
    assert_eq!(
        (listener.address.as_str(), listener.port),
        ("127.0.0.1", 8081)
    );
}
