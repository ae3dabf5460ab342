use super::*;

#[tokio::test]
async fn a_busy_control_plane_port_names_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap();
    let err = control_plane(addr).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    assert!(message.contains(&addr.to_string()), "{message}");
    assert!(message.contains("--listen 127.0.0.1:"), "{message}");
}

#[tokio::test]
async fn a_busy_listener_port_names_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = taken.local_addr().unwrap().port();
    let err = listeners(port).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, Error::InUse { .. }), "{err:?}");
    assert!(message.contains("--port-base"), "{message}");
    assert!(message.contains(&format!("127.0.0.1:{port}")), "{message}");
}

#[tokio::test]
async fn port_base_zero_gives_two_free_ports() {
    let [a, b] = listeners(0).await.unwrap();
    assert_ne!(a, b);
    assert!(a != 0 && b != 0);
    // Free: they can be bound now.
    let _a = TcpListener::bind(("127.0.0.1", a)).await.unwrap();
    let _b = TcpListener::bind(("127.0.0.1", b)).await.unwrap();
}

#[tokio::test]
async fn the_last_port_is_not_a_base() {
    let err = listeners(u16::MAX).await.unwrap_err();
    assert!(matches!(err, Error::PortBase(u16::MAX)), "{err:?}");
}

#[test]
fn wildcard_addresses_become_loopback() {
    assert_eq!(
        reachable("0.0.0.0:7700".parse().unwrap()),
        "127.0.0.1:7700".parse::<SocketAddr>().unwrap()
    );
    assert_eq!(
        reachable("[::]:7700".parse().unwrap()),
        "[::1]:7700".parse::<SocketAddr>().unwrap()
    );
}
