use super::*;

fn valid() -> Config {
    Config {
        node_id: "node-1".into(),
        labels: [("zone".to_string(), "a".to_string())].into(),
        ..Config::default()
    }
}

fn fields(config: &Config) -> Vec<String> {
    config
        .validate()
        .unwrap_err()
        .violations
        .into_iter()
        .map(|v| v.field)
        .collect()
}

#[test]
fn defaults_with_a_node_id_are_valid() {
    valid().validate().unwrap();
    let d = Config::default();
    assert_eq!(d.control_planes, ["http://127.0.0.1:7700"]);
    assert_eq!(d.backoff_base, Duration::from_millis(100));
    assert_eq!(d.backoff_max, Duration::from_secs(5));
    assert_eq!(d.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(d.connect_timeout, Duration::from_secs(2));
}

#[test]
fn every_problem_is_reported() {
    let config = Config {
        node_id: "Node 1".into(),
        labels: [("-bad".to_string(), "x".to_string())].into(),
        control_planes: vec![
            "http://cp-1:7700".into(),
            "cp-2:7700".into(),
            "https://cp-3:7700".into(),
            "http://cp-4:7700/x".into(),
            "not a uri".into(),
        ],
        backoff_base: Duration::from_secs(10),
        heartbeat_interval: Duration::ZERO,
        ..Config::default()
    };
    assert_eq!(
        fields(&config),
        [
            "node_id",
            r#"labels["-bad"]"#,
            "control_planes[1]",
            "tls.ca_cert",
            "control_planes[3]",
            "control_planes[4]",
            "heartbeat_interval",
            "backoff_max",
        ]
    );
    let msg = config.validate().unwrap_err().to_string();
    assert!(
        msg.contains("an https:// address needs a CA certificate"),
        "{msg}"
    );
}

#[test]
fn tls_files_and_the_token_file_are_checked_at_start() {
    let dir = tempfile::tempdir().unwrap();
    let ca = switchyard::tls::testing::Ca::new("test CA");
    let ca_cert = ca.write(dir.path(), "ca");
    let (cert, key) = ca.client(Some("node-1")).write(dir.path(), "node-1");
    let write = |name: &str, text: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let token = write("token", b"  s3cret-token\n");
    let mtls = Config {
        control_planes: vec!["https://127.0.0.1:7700".into()],
        tls: ClientFiles {
            ca_cert: Some(ca_cert.clone()),
            cert: Some(cert.clone()),
            key: Some(key.clone()),
        },
        token_file: Some(token.clone()),
        ..valid()
    };
    mtls.validate().unwrap();
    let value = read_token(&token).unwrap();
    assert_eq!(value.to_str().unwrap(), "Bearer s3cret-token");

    let plaintext_with_ca = Config {
        control_planes: vec!["http://127.0.0.1:7700".into()],
        ..mtls.clone()
    };
    assert_eq!(fields(&plaintext_with_ca), ["tls.ca_cert"]);
    let key_is_a_cert = Config {
        tls: ClientFiles {
            key: Some(cert.clone()),
            ..mtls.tls.clone()
        },
        ..mtls.clone()
    };
    assert_eq!(fields(&key_is_a_cert), ["tls.key"]);
    // Reported once, however many control planes use the file.
    let two = Config {
        control_planes: vec!["https://a:7700".into(), "https://b:7700".into()],
        ..key_is_a_cert
    };
    assert_eq!(fields(&two), ["tls.key"]);

    for (content, words) in [
        (None, "cannot read it"),
        (Some(&b" \n\t"[..]), "holds no token"),
        (
            Some(&b"line one\nline two"[..]),
            "printable ASCII on one line",
        ),
        (Some(&b"\xff\xfe"[..]), "printable ASCII on one line"),
    ] {
        let path = match content {
            Some(text) => write("bad-token", text),
            None => dir.path().join("missing-token"),
        };
        let config = Config {
            token_file: Some(path.clone()),
            ..mtls.clone()
        };
        let invalid = config.validate().unwrap_err();
        assert_eq!(invalid.violations.len(), 1, "{invalid}");
        let message = invalid.to_string();
        assert!(message.contains("token_file"), "{message}");
        assert!(message.contains(words), "{message}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(!message.contains("line one"), "the file is never quoted");
    }
}

#[test]
fn at_least_one_control_plane() {
    let config = Config {
        control_planes: vec![],
        ..valid()
    };
    assert_eq!(fields(&config), ["control_planes"]);
}

#[test]
fn long_nack_errors_are_cut_on_a_character_boundary() {
    assert_eq!(truncate("short".into(), 100), "short");
    let long = "é".repeat(100);
    let cut = truncate(long, 51);
    assert!(cut.len() <= 51, "{}", cut.len());
    assert!(cut.ends_with("(truncated)"), "{cut}");
}

#[tokio::test]
async fn start_refuses_an_invalid_config() {
    let config = Config {
        node_id: String::new(),
        ..Config::default()
    };
    let err = Agent::start(config, CancellationToken::new())
        .await
        .unwrap_err();
    assert!(!err.is_retryable());
    assert!(
        err.to_string()
            .starts_with("invalid configuration: node_id"),
        "{err}"
    );
}
