use std::time::{Duration, Instant};

use switchyard::metrics::{Scrape, parse};
use switchyard::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::testing::fixtures::{item, service};
use crate::testing::{TestDb, TestServer};

async fn scrape(server: &TestServer) -> Scrape {
    let text = server.metrics().await;
    parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

/// Scrapes until `done` holds (at most 10 s).
async fn until(server: &TestServer, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let scrape = scrape(server).await;
        if done(&scrape) {
            return scrape;
        }
        assert!(Instant::now() < deadline, "metrics never showed {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_requests_store_calls_and_revisions_are_counted() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let before = scrape(&server).await;
    for (family, kind) in [
        ("switchyard_cp_agents_connected", Type::Gauge),
        ("switchyard_cp_pushes_total", Type::Counter),
        ("switchyard_cp_push_bytes_total", Type::Counter),
        ("switchyard_cp_acks_total", Type::Counter),
        ("switchyard_cp_nacks_total", Type::Counter),
        ("switchyard_cp_resyncs_total", Type::Counter),
        ("switchyard_cp_propagation_seconds", Type::Histogram),
        ("switchyard_cp_health_reports_total", Type::Counter),
        ("switchyard_cp_health_changes_total", Type::Counter),
        ("switchyard_cp_health_commits_total", Type::Counter),
        ("switchyard_cp_health_damped_total", Type::Counter),
        ("switchyard_cp_store_revision", Type::Gauge),
        ("switchyard_cp_state_revision", Type::Gauge),
        ("switchyard_cp_store_duration_seconds", Type::Histogram),
        ("switchyard_cp_store_errors_total", Type::Counter),
        ("switchyard_cp_api_requests_total", Type::Counter),
    ] {
        assert_eq!(before.families.get(family), Some(&kind), "{family}");
    }
    let ok = [("method", "Apply"), ("code", "OK")];
    assert_eq!(
        before.get("switchyard_cp_api_requests_total", &ok),
        Some(0.0)
    );
    assert_eq!(before.get("switchyard_cp_agents_connected", &[]), Some(0.0));
    let replica = [("replica", &*server.addr.to_string())];
    assert_eq!(
        before.get("switchyard_cp_store_revision", &replica),
        Some(0.0)
    );

    let mut client = server.client().await;
    let applied = client
        .apply(pb::ApplyRequest {
            items: vec![item(service("web"))],
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    let refused = client
        .apply(pb::ApplyRequest {
            items: vec![],
            dry_run: false,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    client
        .get(pb::GetRequest {
            r#ref: Some(
                switchyard::resource::Ref::new(switchyard::resource::Kind::Service, "nope").to_pb(),
            ),
        })
        .await
        .unwrap_err();

    let rev = applied.revision as f64;
    let after = until(&server, "the state at the applied revision", |s| {
        s.get("switchyard_cp_state_revision", &replica) == Some(rev)
    })
    .await;
    assert_eq!(
        after.get("switchyard_cp_store_revision", &replica),
        Some(rev)
    );
    assert_eq!(
        after.get("switchyard_cp_api_requests_total", &ok),
        Some(1.0)
    );
    assert_eq!(
        after.get(
            "switchyard_cp_api_requests_total",
            &[("method", "Apply"), ("code", "INVALID_ARGUMENT")]
        ),
        Some(1.0),
        "a refused Apply counts under its code"
    );
    assert_eq!(
        after.get(
            "switchyard_cp_api_requests_total",
            &[("method", "Get"), ("code", "NOT_FOUND")]
        ),
        Some(1.0)
    );
    // The refused Apply never reached the store: one apply call.
    assert_eq!(
        after.get(
            "switchyard_cp_store_duration_seconds_count",
            &[("op", "apply")]
        ),
        Some(1.0)
    );
    assert!(
        after.get(
            "switchyard_cp_store_duration_seconds_count",
            &[("op", "changes")]
        ) > Some(0.0),
        "following the store reads the change log"
    );
    assert_eq!(
        after.get("switchyard_cp_store_errors_total", &[("op", "apply")]),
        Some(0.0)
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_get_metrics_is_served() {
    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let ask = |request: &'static str| async move {
        let mut conn = tokio::net::TcpStream::connect(server.metrics_addr)
            .await
            .unwrap();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer).await.unwrap();
        answer
    };
    let answer = ask("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
    let answer =
        ask("POST /metrics HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
    assert!(answer.starts_with("HTTP/1.1 405"), "{answer}");
    assert!(
        answer.to_ascii_lowercase().contains("allow: get, head"),
        "{answer}"
    );
    let answer = ask("HEAD /metrics HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.stop().await;
}

#[test]
fn requests_are_counted_by_method_and_code() {
    let r = Requests::default();
    r.record(Method::List, &Ok::<(), Status>(()));
    r.record(Method::List, &Err::<(), _>(Status::aborted("x")));
    r.record(Method::Watch, &Err::<(), _>(Status::out_of_range("x")));
    assert_eq!(r.count(Method::List, Code::Ok), 1);
    assert_eq!(r.count(Method::List, Code::Aborted), 1);
    assert_eq!(r.count(Method::Watch, Code::OutOfRange), 1);
    assert_eq!(r.count(Method::Apply, Code::Ok), 0);
    for (i, code) in CODES.iter().enumerate() {
        let status = Status::new(Code::from_i32(i as i32), "");
        assert_eq!(
            format!("{:?}", status.code()).to_ascii_uppercase(),
            code.replace('_', ""),
            "code {i}"
        );
    }
}
