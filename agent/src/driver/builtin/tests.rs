use std::time::Duration;

use super::*;
use crate::state::Store;
use crate::testing::{endpoint, listener, route, service, snapshot};

/// A node configuration with one HTTP listener on `port`.
fn listening_on(revision: u64, port: u16) -> Arc<NodeConfig> {
    let mut store = Store::new();
    store
        .apply_snapshot(snapshot(
            revision,
            [
                service("web", 1),
                endpoint("web-1", "web", 1),
                route("web", "web", 1),
                listener("front", "127.0.0.1", u32::from(port), "web", 1),
            ],
        ))
        .expect("valid configuration")
}

/// Applied configurations are served; one whose listener cannot bind is
/// refused naming the listener, and the previous one stays served.
#[tokio::test]
async fn applies_what_it_can_serve_and_refuses_the_rest_naming_the_field() {
    let stop = CancellationToken::new();
    let (driver, proxy) = Builtin::new(switchyard_proxy::Builtin::new(), stop.clone());
    let proxy = tokio::spawn(proxy);

    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = free.local_addr().unwrap().port();
    drop(free);
    driver.apply(&listening_on(1, port)).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(tokio::time::Instant::now() < deadline, "never listened");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let blocked = taken.local_addr().unwrap().port();
    let refused = driver
        .apply(&listening_on(2, blocked))
        .await
        .expect_err("a taken port is refused");
    let text = refused.to_string();
    assert!(
        text.contains("listener/front") && text.contains("cannot bind"),
        "{text}"
    );
    assert_eq!(driver.config.borrow().revision, 1, "the previous one stays");
    tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("still served");

    let mut enc = Encoder::new();
    driver.metrics(&mut enc);
    let text = enc.finish();
    assert!(
        text.contains("switchyard_agent_proxy_connections_total{listener=\"front\"}"),
        "{text}"
    );

    stop.cancel();
    proxy.await.unwrap();
}
