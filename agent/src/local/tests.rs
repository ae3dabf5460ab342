use super::*;
use crate::testing::http_call as call;

#[tokio::test]
async fn processes_register_and_deregister_through_the_local_api() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let registrations = Arc::new(watch::Sender::new(None));
    let mut seen = registrations.subscribe();
    let stop = CancellationToken::new();
    let server = tokio::spawn(serve_registrations(
        listener,
        "node-1".into(),
        registrations.clone(),
        stop.clone(),
    ));

    let (status, body) = call(
        port,
        "PUT",
        "/v1/registrations",
        r#"{"service": "web", "address": "127.0.0.1", "port": 8080, "labels": {"version": "v2"},
            "health_check": {"tcp": {}, "interval": "1s"}}"#,
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (202, r#"{"endpoint":"web-node-1-8080"}"#)
    );
    assert!(seen.has_changed().unwrap(), "the agent is told at once");
    {
        let current = seen.borrow_and_update();
        let r = current.as_ref().unwrap();
        assert!(r.request.replace);
        assert_eq!(r.request.endpoints[0].node, "node-1");
        assert_eq!(r.request.endpoints[0].labels["version"], "v2");
    }
    let (status, body) = call(port, "GET", "/v1/registrations", "").await;
    assert_eq!(status, 200);
    assert!(body.contains(r#""name":"web-node-1-8080""#), "{body}");

    // Mistakes are named, and change nothing.
    let (status, body) = call(
        port,
        "PUT",
        "/v1/registrations",
        r#"{"service": "web", "address": "127.0.0.1", "port": 0}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("port"), "{body}");
    let (status, body) = call(
        port,
        "PUT",
        "/v1/registrations",
        r#"{"service": "web", "prot": 1}"#,
    )
    .await;
    assert_eq!(status, 400);
    assert!(body.contains("prot"), "{body}");
    assert!(!seen.has_changed().unwrap());

    let (status, _) = call(port, "DELETE", "/v1/registrations/web-node-1-8080", "").await;
    assert_eq!(status, 202);
    assert!(
        seen.borrow_and_update()
            .as_ref()
            .unwrap()
            .request
            .endpoints
            .is_empty()
    );
    let (status, body) = call(port, "DELETE", "/v1/registrations/web-node-1-8080", "").await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(call(port, "POST", "/v1/registrations", "").await.0, 405);

    stop.cancel();
    server.await.unwrap();
}
