use super::*;

fn tokens(rows: Vec<TokenRow>) -> Tokens {
    let tokens = Tokens::default();
    *tokens.rows.write().unwrap() =
        Arc::new(rows.into_iter().map(|r| (r.name.clone(), r)).collect());
    tokens
}

fn row(name: &str, role: Role, node: &str, secret: &str) -> TokenRow {
    TokenRow {
        name: name.into(),
        role,
        node: node.into(),
        hash: hash(secret),
        created_at_ms: 1,
        created_by: "test".into(),
        revoked_at_ms: None,
    }
}

#[test]
fn every_method_needs_the_role_the_readme_names() {
    let cases = [
        ("/grpc.health.v1.Health/Check", Need::Nobody),
        ("/grpc.health.v1.Health/Watch", Need::Nobody),
        ("/switchyard.v1.OperatorService/Apply", Need::Admin),
        ("/switchyard.v1.OperatorService/Delete", Need::Admin),
        ("/switchyard.v1.OperatorService/Get", Need::Reader),
        ("/switchyard.v1.OperatorService/List", Need::Reader),
        ("/switchyard.v1.OperatorService/Watch", Need::Reader),
        ("/switchyard.v1.OperatorService/ListNodes", Need::Reader),
        ("/switchyard.v1.TokenService/CreateToken", Need::Admin),
        ("/switchyard.v1.TokenService/RevokeToken", Need::Admin),
        ("/switchyard.v1.TokenService/ListTokens", Need::Admin),
        ("/switchyard.v1.AgentService/Sync", Need::Agent),
        ("/switchyard.v1.AgentService/Register", Need::Agent),
        (
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            Need::Anyone,
        ),
        ("/nonsense", Need::Anyone),
    ];
    for (path, need) in cases {
        assert_eq!(Need::of(path), need, "{path}");
    }
    assert!(Need::Reader.allows(Role::Admin));
    assert!(!Need::Admin.allows(Role::Reader));
    assert!(
        !Need::Agent.allows(Role::Admin),
        "an admin does not speak for nodes"
    );
    assert!(!Need::Reader.allows(Role::Agent));
}

#[test]
fn a_secret_is_accepted_only_whole_and_unrevoked() {
    let good = new_secret("ci").unwrap();
    let other = new_secret("ci").unwrap();
    assert_ne!(good, other, "secrets are random");
    assert!(good.starts_with("syt.") && good.ends_with(".ci"));
    let revoked_secret = new_secret("old").unwrap();
    let mut revoked = row("old", Role::Admin, "", &revoked_secret);
    revoked.revoked_at_ms = Some(2);
    let t = tokens(vec![
        row("ci", Role::Reader, "", &good),
        row("edge-1", Role::Agent, "edge-1", "syt.x.edge-1"),
        revoked,
    ]);
    assert_eq!(
        t.verify(&good),
        Some(Principal::Token {
            name: "ci".into(),
            role: Role::Reader,
            node: None
        })
    );
    assert_eq!(t.verify(&other), None, "same name, other secret");
    assert_eq!(t.verify(&good[..good.len() - 1]), None);
    assert_eq!(t.verify(&revoked_secret), None);
    assert_eq!(t.verify("syt.x.nobody"), None);
    assert_eq!(t.verify("garbage"), None);
    assert_eq!(
        t.verify("syt.x.edge-1")
            .and_then(|p| p.node().map(str::to_owned)),
        Some("edge-1".to_owned())
    );
}

#[test]
fn principals_read_as_the_audit_trail_shows_them() {
    let token = Principal::Token {
        name: "alice".into(),
        role: Role::Admin,
        node: None,
    };
    assert_eq!(token.to_string(), "token/alice");
    assert_eq!(Principal::Node("edge-1".into()).to_string(), "node/edge-1");
    assert_eq!(Principal::Anonymous.to_string(), "anonymous");
}

#[test]
fn an_agent_speaks_only_for_its_own_node_when_enforced() {
    let caller = |principal, enforced| Caller {
        principal,
        address: String::new(),
        enforced,
    };
    let a = caller(Principal::Node("a".into()), true);
    assert!(a.speak_for("hello.node_id", "a").is_ok());
    let denied = a.speak_for("hello.node_id", "b").unwrap_err();
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(
        denied
            .message()
            .contains("node/a may not speak for node \"b\"")
    );
    let long = "b".repeat(10_000);
    assert!(a.speak_for("node_id", &long).unwrap_err().message().len() < 200);
    assert!(
        caller(Principal::Anonymous, false)
            .speak_for("node_id", "b")
            .is_ok()
    );
}

#[test]
fn nothing_is_exposed_beyond_loopback_without_tls_and_auth_unless_insecure_says_so() {
    let lo: std::net::SocketAddr = "127.0.0.1:7700".parse().unwrap();
    let any: std::net::SocketAddr = "0.0.0.0:7700".parse().unwrap();
    let none = Insecure::default();
    assert!(
        !default_enforce(lo, false),
        "the quick start needs no setup"
    );
    assert!(default_enforce(lo, true));
    assert!(default_enforce(any, false));
    assert!(
        check_exposure(
            lo,
            false,
            false,
            Some("127.0.0.1:9700".parse().unwrap()),
            none
        )
        .is_ok()
    );
    let e = check_exposure(any, false, true, None, none).unwrap_err();
    assert!(e.contains("--insecure-plaintext"), "{e}");
    let plain = Insecure {
        plaintext: true,
        ..none
    };
    assert!(check_exposure(any, false, true, None, plain).is_ok());
    let e = check_exposure(any, true, false, None, none).unwrap_err();
    assert!(e.contains("--insecure-no-auth"), "{e}");
    assert!(check_exposure(any, true, true, None, none).is_ok());
    let e = check_exposure(
        lo,
        false,
        false,
        Some("0.0.0.0:9700".parse().unwrap()),
        none,
    )
    .unwrap_err();
    assert!(e.contains("--insecure-metrics"), "{e}");
    let metrics = Insecure {
        metrics: true,
        ..none
    };
    assert!(
        check_exposure(
            lo,
            false,
            false,
            Some("0.0.0.0:9700".parse().unwrap()),
            metrics
        )
        .is_ok()
    );
}
