use std::time::Duration;

use switchyard::resource::Check;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::state::Store;

fn spec(check: Check) -> HealthCheck {
    HealthCheck {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        healthy_threshold: 2,
        unhealthy_threshold: 3,
        check,
    }
}

fn http(status: std::ops::RangeInclusive<u16>, body: Option<&str>) -> Check {
    Check::Http {
        path: "/healthz".into(),
        host: None,
        status,
        body: body.map(str::to_owned),
    }
}

/// An HTTP server answering every request with `status` and `body`, on a
/// fresh loopback port; it runs until the test's runtime ends.
async fn http_server(status: u16, body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0; 4096];
                let n = conn.read(&mut buf).await.unwrap_or(0);
                let request = String::from_utf8_lossy(&buf[..n]).to_string();
                assert!(request.starts_with("GET /healthz HTTP/1.1"), "{request}");
                let response = format!(
                    "HTTP/1.1 {status} X\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap().port()
}

fn target(port: u16, check: Check) -> Target {
    Target {
        address: "127.0.0.1".into(),
        port,
        check: spec(check),
    }
}

#[tokio::test]
async fn http_checks_status_range_and_body() {
    let ok = http_server(204, "").await;
    let failing = http_server(503, "down").await;
    let body = http_server(200, "status: ready").await;
    assert_eq!(
        probe(&target(ok, http(200..=399, None))).await,
        Ok("HTTP 204".into())
    );
    assert_eq!(
        probe(&target(failing, http(200..=399, None))).await,
        Err("HTTP 503".into())
    );
    // A custom range can accept what the default refuses.
    assert!(probe(&target(failing, http(500..=503, None))).await.is_ok());
    assert!(
        probe(&target(body, http(200..=200, Some("ready"))))
            .await
            .is_ok()
    );
    let err = probe(&target(body, http(200..=200, Some("green"))))
        .await
        .unwrap_err();
    assert!(err.contains("body lacks \"green\""), "{err}");
    let err = probe(&target(closed_port().await, http(200..=399, None)))
        .await
        .unwrap_err();
    assert!(err.starts_with("connect:"), "{err}");
}

#[tokio::test]
async fn tcp_checks_connect() {
    let open = http_server(200, "").await;
    assert!(probe(&target(open, Check::Tcp)).await.is_ok());
    assert!(
        probe(&target(closed_port().await, Check::Tcp))
            .await
            .is_err()
    );
}

#[tokio::test]
async fn grpc_checks_use_the_standard_health_protocol() {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop", tonic_health::ServingStatus::NotServing)
        .await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stop = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                stop.clone().cancelled_owned(),
            ),
    );
    let grpc = |service: &str| Check::Grpc {
        service: service.into(),
    };
    assert_eq!(
        probe(&target(port, grpc(""))).await,
        Ok("gRPC SERVING".into())
    );
    assert_eq!(
        probe(&target(port, grpc("shop"))).await,
        Err("gRPC NOT_SERVING".into())
    );
    let err = probe(&target(port, grpc("nope"))).await.unwrap_err();
    assert!(err.contains("NotFound"), "{err}");
    stop.cancel();
    server.await.unwrap().unwrap();
    assert!(probe(&target(port, grpc(""))).await.is_err(), "server gone");
}

#[test]
fn first_result_decides_then_rise_and_fall_thresholds_apply() {
    let check = spec(Check::Tcp);
    let mut s = Streak::default();
    assert_eq!(s.record(true, &check), Some(pb::Health::Healthy));
    assert_eq!(s.record(false, &check), None);
    assert_eq!(s.record(false, &check), None);
    assert_eq!(
        s.record(false, &check),
        Some(pb::Health::Unhealthy),
        "fall = 3"
    );
    assert_eq!(s.record(true, &check), None);
    assert_eq!(s.record(false, &check), None, "a failure resets the rise");
    assert_eq!(s.record(true, &check), None);
    assert_eq!(
        s.record(true, &check),
        Some(pb::Health::Healthy),
        "rise = 2"
    );
    let mut fresh = Streak::default();
    assert_eq!(fresh.record(false, &check), Some(pb::Health::Unhealthy));
}

/// A configuration with endpoint `mine` (owned by node `n1`, checked by
/// TCP on `port`) and `theirs` (owned by `n2`).
fn config(revision: u64, port: u16) -> Arc<NodeConfig> {
    use crate::testing::{endpoint, service, snapshot};
    let mut web = service("web", revision);
    if let Some(pb::resource::Kind::Service(s)) = &mut web.kind {
        s.health_check = Some(pb::HealthCheck {
            interval: Some(prost_types::Duration {
                seconds: 0,
                nanos: 50_000_000,
            }),
            check: Some(pb::health_check::Check::Tcp(pb::TcpHealthCheck {})),
            ..Default::default()
        });
    }
    let owned = |name: &str, node: &str| {
        let mut e = endpoint(name, "web", revision);
        if let Some(pb::resource::Kind::Endpoint(e)) = &mut e.kind {
            e.node = node.into();
            e.address = "127.0.0.1".into();
            e.port = u32::from(port);
        }
        e
    };
    let mut store = Store::new();
    store
        .apply_snapshot(snapshot(
            revision,
            [web, owned("mine", "n1"), owned("theirs", "n2")],
        ))
        .unwrap()
}

#[tokio::test]
async fn checks_follow_the_configuration() {
    let up = http_server(200, "").await;
    let down = closed_port().await;
    let (publish, configs) = watch::channel(config(1, up));
    let (results, mut observed) = watch::channel(Results::new());
    let stop = CancellationToken::new();
    let checks = Arc::new(Checks::default());
    let task = tokio::spawn(run(
        "n1".into(),
        configs,
        results,
        checks.clone(),
        stop.clone(),
    ));

    let wait_for = |want: Option<pb::Health>| {
        let mut observed = observed.clone();
        async move {
            tokio::time::timeout(
                Duration::from_secs(5),
                observed.wait_for(|r| r.get("mine").map(|o| o.health) == want),
            )
            .await
            .expect("health settles")
            .map(|r| r.clone())
            .unwrap()
        }
    };
    let r = wait_for(Some(pb::Health::Healthy)).await;
    assert!(
        !r.contains_key("theirs"),
        "only this node's endpoints are checked"
    );
    // The endpoint moves to a dead port: the check restarts there.
    publish.send_replace(config(2, down));
    let r = wait_for(Some(pb::Health::Unhealthy)).await;
    assert!(r["mine"].reason.starts_with("connect:"), "{:?}", r["mine"]);
    // Checks are counted per endpoint, across the restart; only the checks
    // of the dead port failed.
    let all = checks.all();
    assert_eq!(all.len(), 1, "only this node's endpoints are counted");
    let (name, counts) = &all[0];
    assert_eq!(name, "mine");
    let runs = counts.runs.load(Ordering::Relaxed);
    let failures = counts.failures.load(Ordering::Relaxed);
    assert!(
        failures >= 1 && runs > failures,
        "{runs} runs, {failures} failures"
    );
    // It is no longer this node's: its result and its counts go away.
    publish.send_replace(Arc::new(NodeConfig::default()));
    wait_for(None).await;
    assert!(checks.all().is_empty());
    stop.cancel();
    task.await.unwrap();
    assert!(observed.borrow_and_update().is_empty());
}
