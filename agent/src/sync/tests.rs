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
            "control_planes[2]",
            "control_planes[3]",
            "control_planes[4]",
            "heartbeat_interval",
            "backoff_max",
        ]
    );
    let msg = config.validate().unwrap_err().to_string();
    assert!(msg.contains("TLS is not supported yet"), "{msg}");
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
