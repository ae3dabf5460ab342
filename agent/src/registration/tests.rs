use super::*;

const FILE: &str = r#"
address = "10.0.0.7"
on_shutdown = "deregister"

[[service]]
service = "web"
port = 8080
labels = { version = "v2" }
create = { protocol = "http" }
health_check = { http = { path = "/healthz", status = [200, 204] }, interval = "2s", fall = 2 }

[[service]]
service = "cache"
name = "cache-local"
address = "127.0.0.1"
port = 6379
health_check = { tcp = {} }
"#;

#[test]
fn a_file_becomes_a_registration_of_the_node() {
    let r = parse(FILE, "node-1").unwrap();
    assert_eq!(r.on_shutdown, OnShutdown::Deregister);
    assert!(
        r.request.replace,
        "the file is the node's whole registration"
    );
    assert_eq!(r.endpoint_names(), ["web-node-1-8080", "cache-local"]);
    let web = &r.request.endpoints[0];
    assert_eq!(
        (web.address.as_str(), web.port, web.node.as_str()),
        ("10.0.0.7", 8080, "node-1")
    );
    assert_eq!(web.labels["version"], "v2");
    let check = web.health_check.as_ref().unwrap();
    assert_eq!(check.interval.unwrap().seconds, 2);
    assert_eq!(check.unhealthy_threshold, 2);
    let Some(pb::health_check::Check::Http(http)) = &check.check else {
        panic!("{check:?}")
    };
    assert_eq!(
        (
            http.path.as_str(),
            http.expected_status_min,
            http.expected_status_max
        ),
        ("/healthz", 200, 204)
    );
    assert_eq!(r.request.endpoints[1].address, "127.0.0.1");
    // Only `web` asks to be created.
    assert_eq!(r.request.services.len(), 1);
    assert_eq!(r.request.services[0].protocol(), pb::Protocol::Http);
}

#[test]
fn defaults_drain_on_shutdown_and_an_empty_file_registers_nothing() {
    let r = parse("", "node-1").unwrap();
    assert_eq!(r.on_shutdown, OnShutdown::Drain);
    assert!(r.request.endpoints.is_empty() && r.request.replace);
}

#[test]
fn every_problem_is_named_by_its_place_in_the_file() {
    let text = r#"
[[service]]
service = "web"
port = 70000

[[service]]
service = "web"
address = "10.0.0.1"
port = 80
health_check = { interval = "soon", http = {}, tcp = {} }
create = { protocol = "smtp" }
"#;
    let err = parse(text, "node-1").unwrap_err().to_string();
    for expected in [
        "service[0].address: required",
        "service[1].health_check.interval: \"soon\"",
        "service[1].health_check: exactly one of http, tcp, grpc",
        "service[1].create.protocol: \"smtp\"",
    ] {
        assert!(err.contains(expected), "{expected:?} not in: {err}");
    }
}

#[test]
fn syntax_errors_and_unknown_keys_give_the_line() {
    let err = parse("[[service]]\nservice = \"web\"\nport = 80\nprot = 1\n", "n").unwrap_err();
    let text = err.to_string();
    assert!(text.contains("line 4") && text.contains("prot"), "{text}");
    let err = load(Path::new("/nonexistent/services.toml"), "n").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("reading /nonexistent/services.toml"),
        "{err}"
    );
}

#[test]
fn an_invalid_endpoint_is_named_against_the_file() {
    let text = "[[service]]\nservice = \"web\"\naddress = \"10.0.0.1\"\nport = 0\n";
    let err = parse(text, "node-1").unwrap_err().to_string();
    assert!(err.contains("service[0].port"), "{err}");
}
