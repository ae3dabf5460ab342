//! The operator API over real gRPC: a control plane on a loopback port, a
//! real store (Postgres and SQLite), a generated client.

use std::collections::BTreeSet;
use std::time::Duration;

use switchyard::pb;
use switchyard::pb::operator_service_client::OperatorServiceClient;
use switchyard_control_plane::testing::fixtures::{self, endpoint, item};
use switchyard_control_plane::testing::{TestDb, TestServer};
use tonic::Code;
use tonic::transport::Channel;
use tonic_types::StatusExt;

type Client = OperatorServiceClient<Channel>;

fn service(name: &str) -> pb::Service {
    pb::Service {
        name: name.into(),
        ..Default::default()
    }
}

fn route(name: &str, service: &str) -> pb::Route {
    pb::Route {
        name: name.into(),
        rules: vec![pb::RouteRule {
            matches: vec![pb::RouteMatch {
                path: Some(pb::PathMatch {
                    kind: Some(pb::path_match::Kind::Prefix("/".into())),
                }),
                ..Default::default()
            }],
            action: Some(pb::RouteAction {
                destinations: vec![pb::WeightedDestination {
                    service: service.into(),
                    weight: 1,
                    ..Default::default()
                }],
                ..Default::default()
            }),
        }],
        ..Default::default()
    }
}

fn listener(name: &str, route: &str) -> pb::Listener {
    fixtures::listener(name, "127.0.0.1", 15001, route)
}

fn svc(s: pb::Service) -> pb::ApplyItem {
    item(pb::resource::Kind::Service(s))
}
fn ep(e: pb::Endpoint) -> pb::ApplyItem {
    item(pb::resource::Kind::Endpoint(e))
}
fn rt(r: pb::Route) -> pb::ApplyItem {
    item(pb::resource::Kind::Route(r))
}
fn lst(l: pb::Listener) -> pb::ApplyItem {
    item(pb::resource::Kind::Listener(l))
}

async fn apply(
    client: &mut Client,
    items: Vec<pb::ApplyItem>,
) -> Result<pb::ApplyResponse, tonic::Status> {
    client
        .apply(pb::ApplyRequest {
            items,
            dry_run: false,
        })
        .await
        .map(|r| r.into_inner())
}

async fn names(client: &mut Client, kind: pb::Kind) -> BTreeSet<String> {
    let list = client
        .list(pb::ListRequest {
            kind: kind as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    list.resources
        .iter()
        .map(|r| switchyard::resource::pb_ref(r).unwrap().name)
        .collect()
}

fn dur(seconds: i64, nanos: i32) -> Option<prost_types::Duration> {
    Some(prost_types::Duration { seconds, nanos })
}

/// Invalid inputs, each with the field path the error must name.
fn invalid_cases() -> Vec<(&'static str, pb::ApplyItem, &'static str)> {
    use pb::resource::Kind as K;
    let mut cases = vec![];
    let mut add = |what, item, field| cases.push((what, item, field));
    add(
        "empty name",
        svc(service("")),
        "items[1].resource.service.name",
    );
    add(
        "upper-case name",
        svc(service("Web")),
        "items[1].resource.service.name",
    );
    add(
        "name too long",
        svc(service(&"a".repeat(254))),
        "items[1].resource.service.name",
    );
    let mut s = service("s1");
    s.labels.insert("bad key!".into(), "v".into());
    add(
        "bad label key",
        svc(s),
        "items[1].resource.service.labels[\"bad key!\"]",
    );
    let mut s = service("s2");
    for i in 0..65 {
        s.labels.insert(format!("k{i}"), "v".into());
    }
    add(
        "too many labels",
        svc(s),
        "items[1].resource.service.labels",
    );
    add(
        "unknown lb policy",
        svc(pb::Service {
            lb_policy: 99,
            ..service("s3")
        }),
        "items[1].resource.service.lb_policy",
    );
    add(
        "ring hash without hash policy",
        svc(pb::Service {
            lb_policy: pb::LbPolicy::RingHash as i32,
            ..service("s4")
        }),
        "items[1].resource.service.hash_policy",
    );
    let check = |interval, timeout, min, max| pb::HealthCheck {
        interval,
        timeout,
        check: Some(pb::health_check::Check::Http(pb::HttpHealthCheck {
            expected_status_min: min,
            expected_status_max: max,
            ..Default::default()
        })),
        ..Default::default()
    };
    add(
        "health timeout above interval",
        svc(pb::Service {
            health_check: Some(check(dur(1, 0), dur(2, 0), 0, 0)),
            ..service("s5")
        }),
        "items[1].resource.service.health_check.timeout",
    );
    add(
        "health interval too short",
        svc(pb::Service {
            health_check: Some(check(dur(0, 10_000_000), None, 0, 0)),
            ..service("s6")
        }),
        "items[1].resource.service.health_check.interval",
    );
    add(
        "status range reversed",
        svc(pb::Service {
            health_check: Some(check(None, None, 500, 200)),
            ..service("s7")
        }),
        "items[1].resource.service.health_check.http.expected_status_max",
    );
    add(
        "negative connect timeout",
        svc(pb::Service {
            connect_timeout: dur(-1, 0),
            ..service("s8")
        }),
        "items[1].resource.service.connect_timeout",
    );
    add(
        "idle timeout over an hour",
        svc(pb::Service {
            idle_timeout: dur(7200, 0),
            ..service("s8b")
        }),
        "items[1].resource.service.idle_timeout",
    );
    add(
        "ejection share above 100%",
        svc(pb::Service {
            outlier_detection: Some(pb::OutlierDetection {
                max_ejection_percent: 150,
                ..Default::default()
            }),
            ..service("s9")
        }),
        "items[1].resource.service.outlier_detection.max_ejection_percent",
    );
    add(
        "port 0",
        ep(endpoint("e1", "web", 0)),
        "items[1].resource.endpoint.port",
    );
    add(
        "port above 65535",
        ep(endpoint("e2", "web", 70_000)),
        "items[1].resource.endpoint.port",
    );
    add(
        "weight too large",
        ep(pb::Endpoint {
            weight: 20_000,
            ..endpoint("e3", "web", 80)
        }),
        "items[1].resource.endpoint.weight",
    );
    add(
        "bad address",
        ep(pb::Endpoint {
            address: "not an address".into(),
            ..endpoint("e4", "web", 80)
        }),
        "items[1].resource.endpoint.address",
    );
    add(
        "endpoint of a missing service",
        ep(endpoint("e5", "missing", 80)),
        "items[1].resource.endpoint.service",
    );
    add(
        "route without rules",
        rt(pb::Route {
            rules: vec![],
            ..route("r1", "web")
        }),
        "items[1].resource.route.rules",
    );
    let mut r = route("r2", "web");
    r.rules[0].matches[0].path = Some(pb::PathMatch {
        kind: Some(pb::path_match::Kind::Regex("/v[0-9".into())),
    });
    add(
        "bad regex",
        rt(r),
        "items[1].resource.route.rules[0].matches[0].path.regex",
    );
    let mut r = route("r3", "web");
    r.rules[0].matches[0].path = Some(pb::PathMatch {
        kind: Some(pb::path_match::Kind::Prefix("api".into())),
    });
    add(
        "relative path prefix",
        rt(r),
        "items[1].resource.route.rules[0].matches[0].path.prefix",
    );
    let mut r = route("r4", "web");
    r.rules[0].matches[0].headers.push(pb::HeaderMatch {
        name: "bad header".into(),
        value: Some(pb::StringMatch {
            kind: Some(pb::string_match::Kind::Exact("x".into())),
        }),
        invert: false,
    });
    add(
        "bad header name",
        rt(r),
        "items[1].resource.route.rules[0].matches[0].headers[0].name",
    );
    add(
        "route to a missing service",
        rt(route("r5", "missing")),
        "items[1].resource.route.rules[0].action.destinations[0].service",
    );
    let mut r = route("r6", "web");
    r.rules[0].action.as_mut().unwrap().retry = Some(pb::RetryPolicy {
        attempts: 11,
        ..Default::default()
    });
    add(
        "too many retries",
        rt(r),
        "items[1].resource.route.rules[0].action.retry.attempts",
    );
    let mut r = route("r7", "web");
    r.rules[0].action.as_mut().unwrap().retry = Some(pb::RetryPolicy {
        attempts: 2,
        ..Default::default()
    });
    add(
        "retries without a condition",
        rt(r),
        "items[1].resource.route.rules[0].action.retry.retry_on",
    );
    let mut r = route("r8", "web");
    r.rules = (0..=switchyard::validate::MAX_RULES)
        .map(|_| r.rules[0].clone())
        .collect();
    add("too many rules", rt(r), "items[1].resource.route.rules");
    let mut r = route("r9", "web");
    r.rules[0].matches[0].path = Some(pb::PathMatch {
        kind: Some(pb::path_match::Kind::Exact("/a".into())),
    });
    r.rules[0].action.as_mut().unwrap().prefix_rewrite = "/b".into();
    add(
        "rewrite without a prefix match",
        rt(r),
        "items[1].resource.route.rules[0].action.prefix_rewrite",
    );
    add(
        "listener address not an IP",
        lst(pb::Listener {
            address: "localhost".into(),
            ..listener("l1", "base")
        }),
        "items[1].resource.listener.address",
    );
    add(
        "tcp listener naming a route",
        lst(pb::Listener {
            protocol: pb::Protocol::Tcp as i32,
            ..listener("l2", "base")
        }),
        "items[1].resource.listener.route",
    );
    add(
        "listener of a missing route",
        lst(listener("l3", "missing")),
        "items[1].resource.listener.route",
    );
    add(
        "resource with no kind",
        pb::ApplyItem {
            resource: Some(pb::Resource {
                kind: None,
                ..Default::default()
            }),
            expected_revision: None,
        },
        "items[1].resource",
    );
    add(
        "item with no resource",
        pb::ApplyItem {
            resource: None,
            expected_revision: None,
        },
        "items[1].resource",
    );
    add(
        "same resource twice",
        svc(service("fresh")),
        "items[1].resource.service",
    );
    let _ = K::Service;
    cases
}

async fn invalid_inputs_name_the_field_and_change_nothing(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    let base = apply(
        &mut client,
        vec![
            svc(service("web")),
            ep(endpoint("web-1", "web", 8080)),
            rt(route("base", "web")),
            lst(listener("base", "base")),
        ],
    )
    .await
    .unwrap();
    let cases = invalid_cases();
    assert!(cases.len() >= 20);
    for (what, bad, field) in cases {
        // A valid resource rides along in every batch: it must not land either.
        let err = apply(&mut client, vec![svc(service("fresh")), bad])
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{what}: {err:?}");
        assert!(
            err.message().contains(&format!("{field}: ")),
            "{what}: {field} not named in {:?}",
            err.message()
        );
        let details = err
            .get_details_bad_request()
            .unwrap_or_else(|| panic!("{what}: no BadRequest detail"));
        assert!(
            details.field_violations.iter().any(|v| v.field == field),
            "{what}: {details:?}"
        );
    }
    // Nothing was written: the revision did not move and no stray resource exists.
    let list = client
        .list(pb::ListRequest {
            kind: pb::Kind::Service as i32,
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(list.get_ref().revision, base.revision);
    assert_eq!(
        names(&mut client, pb::Kind::Service).await,
        BTreeSet::from(["web".to_string()])
    );
    assert_eq!(
        names(&mut client, pb::Kind::Route).await,
        BTreeSet::from(["base".to_string()])
    );

    // Every violation of one request is reported at once.
    let err = apply(
        &mut client,
        vec![ep(pb::Endpoint {
            weight: 20_000,
            ..endpoint("Bad", "web", 0)
        })],
    )
    .await
    .unwrap_err();
    let fields: Vec<_> = err
        .get_details_bad_request()
        .unwrap()
        .field_violations
        .into_iter()
        .map(|v| v.field)
        .collect();
    assert_eq!(
        fields,
        [
            "items[0].resource.endpoint.name",
            "items[0].resource.endpoint.port",
            "items[0].resource.endpoint.weight"
        ]
    );
    server.stop().await;
}

async fn errors_have_their_codes(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    let first = apply(
        &mut client,
        vec![svc(service("web")), ep(endpoint("web-1", "web", 1))],
    )
    .await
    .unwrap();

    // Stale optimistic concurrency: ABORTED, nothing written.
    let mut stale = ep(endpoint("web-1", "web", 2));
    stale.expected_revision = Some(first.revision + 5);
    let err = apply(&mut client, vec![stale]).await.unwrap_err();
    assert_eq!(err.code(), Code::Aborted, "{err:?}");
    let got = client
        .get(pb::GetRequest {
            r#ref: Some(pb::ResourceRef {
                kind: pb::Kind::Endpoint as i32,
                name: "web-1".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner();
    match got.resource.unwrap().kind.unwrap() {
        pb::resource::Kind::Endpoint(e) => assert_eq!((e.port, e.revision), (1, first.revision)),
        other => panic!("unexpected {other:?}"),
    }

    // Deleting a referenced service: FAILED_PRECONDITION naming who refers to it.
    let del = |kind: pb::Kind, name: &str| pb::DeleteRequest {
        items: vec![pb::DeleteItem {
            r#ref: Some(pb::ResourceRef {
                kind: kind as i32,
                name: name.into(),
            }),
            expected_revision: None,
        }],
        dry_run: false,
    };
    let err = client
        .delete(del(pb::Kind::Service, "web"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    assert!(
        err.message().contains("endpoint/web-1"),
        "{}",
        err.message()
    );

    let err = client
        .delete(del(pb::Kind::Route, "nope"))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get(pb::GetRequest {
            r#ref: Some(pb::ResourceRef {
                kind: pb::Kind::Service as i32,
                name: "nope".into(),
            }),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .list(pb::ListRequest {
            kind: pb::Kind::Service as i32,
            label_selector: "a=b,=c".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        err.message().contains("label_selector"),
        "{}",
        err.message()
    );
    let err = client.list(pb::ListRequest::default()).await.unwrap_err();
    assert!(err.message().contains("kind"), "{}", err.message());
    server.stop().await;
}

async fn list_filters_by_labels_and_pages(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    let mut items = vec![];
    for i in 0..25 {
        let mut s = service(&format!("svc-{i:02}"));
        s.labels
            .insert("team".into(), if i % 2 == 0 { "a" } else { "b" }.into());
        items.push(svc(s));
    }
    let applied = apply(&mut client, items).await.unwrap();
    let mut seen = vec![];
    let mut token = String::new();
    loop {
        let page = client
            .list(pb::ListRequest {
                kind: pb::Kind::Service as i32,
                label_selector: "team=a".into(),
                page_size: 4,
                page_token: token.clone(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(page.resources.len() <= 4);
        assert_eq!(page.revision, applied.revision);
        seen.extend(
            page.resources
                .iter()
                .map(|r| switchyard::resource::pb_ref(r).unwrap().name),
        );
        if page.next_page_token.is_empty() {
            break;
        }
        token = page.next_page_token;
    }
    let expected: Vec<_> = (0..25).step_by(2).map(|i| format!("svc-{i:02}")).collect();
    assert_eq!(seen, expected);
    server.stop().await;
}

/// Many concurrent writers through two replicas on one database; a watcher
/// sees every revision exactly once, in order, none skipped, each carrying
/// what its writer wrote.
async fn concurrent_writers_watcher_sees_every_revision_once(db: TestDb, replicas: usize) {
    const WRITERS: usize = 8;
    const WRITES: usize = 40;
    let servers: Vec<TestServer> =
        futures::future::join_all((0..replicas).map(|_| TestServer::start(db.url()))).await;
    let mut client = servers[0].client().await;
    apply(&mut client, vec![svc(service("web"))]).await.unwrap();
    let mut watch = client
        .watch(pb::WatchRequest {
            from_revision: 0,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();

    let writers = (0..WRITERS).map(|w| {
        let addr = servers[w % replicas].addr;
        tokio::spawn(async move {
            let mut client = OperatorServiceClient::connect(format!("http://{addr}"))
                .await
                .unwrap();
            let mut acked = vec![];
            for i in 0..WRITES {
                let port = (w * 1000 + i + 1) as u32;
                let resp = apply(
                    &mut client,
                    vec![ep(endpoint(&format!("w{w}"), "web", port))],
                )
                .await
                .unwrap();
                acked.push((resp.revision, port));
            }
            acked
        })
    });
    let acked: Vec<(u64, u32)> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    let total = 1 + (WRITERS * WRITES) as u64;

    let mut seen = vec![];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while seen.last().is_none_or(|(rev, _)| *rev < total) {
        let resp = tokio::time::timeout_at(deadline, watch.message())
            .await
            .expect("watch timed out")
            .unwrap()
            .unwrap();
        for change in resp.changes {
            let port = match change.resource.and_then(|r| r.kind) {
                Some(pb::resource::Kind::Endpoint(e)) => e.port,
                _ => 0,
            };
            seen.push((change.revision, port));
        }
    }
    let revisions: Vec<u64> = seen.iter().map(|s| s.0).collect();
    assert_eq!(
        revisions,
        (1..=total).collect::<Vec<_>>(),
        "every revision once, in order"
    );
    for (rev, port) in acked {
        assert_eq!(
            seen[(rev - 1) as usize],
            (rev, port),
            "revision {rev} carries its writer's change"
        );
    }
    for s in servers {
        s.stop().await;
    }
}

async fn watch_follows_changes_and_filters_kinds(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    let first = apply(&mut client, vec![svc(service("web"))]).await.unwrap();
    let mut watch = client
        .watch(pb::WatchRequest {
            from_revision: first.revision,
            kinds: vec![pb::Kind::Endpoint as i32],
        })
        .await
        .unwrap()
        .into_inner();
    apply(&mut client, vec![svc(service("api"))]).await.unwrap();
    let second = apply(&mut client, vec![ep(endpoint("web-1", "web", 80))])
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.revision, second.revision);
    assert_eq!(resp.changes.len(), 1, "the service change is filtered out");
    assert_eq!(resp.changes[0].op, pb::ChangeOp::Upsert as i32);
    // Watch and Get show who made the change: this client, from its address.
    let author = resp.changes[0].author.clone().expect("an author");
    assert!(author.address.starts_with("127.0.0.1:"), "{author:?}");
    assert!(author.at.is_some());
    let got = client
        .get(pb::GetRequest {
            r#ref: Some(pb::ResourceRef {
                kind: pb::Kind::Endpoint as i32,
                name: "web-1".into(),
            }),
        })
        .await
        .unwrap()
        .into_inner()
        .resource
        .unwrap();
    assert_eq!(got.last_change, Some(author));
    client
        .delete(pb::DeleteRequest {
            items: vec![pb::DeleteItem {
                r#ref: Some(pb::ResourceRef {
                    kind: pb::Kind::Endpoint as i32,
                    name: "web-1".into(),
                }),
                expected_revision: Some(second.revision),
            }],
            dry_run: false,
        })
        .await
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.changes[0].op, pb::ChangeOp::Delete as i32);
    assert!(resp.changes[0].resource.is_none());
    // The server's shutdown ends the open stream instead of hanging.
    server.stop().await;
    let end = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "stream ended: {end:?}");
}

async fn dry_run_reports_without_writing(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    apply(&mut client, vec![svc(service("web"))]).await.unwrap();
    let resp = client
        .apply(pb::ApplyRequest {
            items: vec![svc(service("web")), svc(service("api"))],
            dry_run: true,
        })
        .await
        .unwrap()
        .into_inner();
    let actions: Vec<_> = resp.results.iter().map(|r| r.action).collect();
    assert_eq!(
        actions,
        [
            pb::ApplyAction::Unchanged as i32,
            pb::ApplyAction::Created as i32
        ]
    );
    assert_eq!(resp.revision, 1);
    assert_eq!(
        names(&mut client, pb::Kind::Service).await,
        BTreeSet::from(["web".to_string()])
    );
    server.stop().await;
}

/// Bytes a status takes as metadata: its message and its details (sent in
/// base64; they repeat the message).
fn metadata_bytes(status: &tonic::Status) -> usize {
    status.message().len() + status.details().len().div_ceil(3) * 4
}

/// Every field violation of `status`, as (field, description).
fn violations(status: &tonic::Status) -> Vec<(String, String)> {
    status
        .get_details_bad_request()
        .unwrap_or_else(|| panic!("no BadRequest detail: {status:?}"))
        .field_violations
        .into_iter()
        .map(|v| (v.field, v.description))
        .collect()
}

/// A 100 KB label key, a 1 MB address, a huge selector, header name, host
/// and regex: each is named, quoted short with its length, and the whole
/// status stays small enough for any client's metadata limit.
async fn huge_values_give_bounded_errors(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    apply(&mut client, vec![svc(service("web"))]).await.unwrap();
    let key = "k".repeat(100_000);
    let mut s = service("labelled");
    s.labels.insert(key.clone(), "v".into());
    let address = "a".repeat(1 << 20);
    let mut r = route("r", "web");
    let m = &mut r.rules[0].matches[0];
    m.host = "h".repeat(300_000);
    m.headers.push(pb::HeaderMatch {
        name: "n!".repeat(50_000),
        value: Some(pb::StringMatch {
            kind: Some(pb::string_match::Kind::Regex(format!(
                "({}",
                "x".repeat(1000)
            ))),
        }),
        invert: false,
    });
    let err = apply(
        &mut client,
        vec![
            svc(s),
            ep(pb::Endpoint {
                address: address.clone(),
                ..endpoint("big", "web", 80)
            }),
            rt(r),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(
        metadata_bytes(&err) < 4096,
        "{} bytes",
        metadata_bytes(&err)
    );
    let got = violations(&err);
    let short_key = format!("\"{}…\"", "k".repeat(64));
    assert_eq!(
        got,
        [
            (
                format!("items[0].resource.service.labels[{short_key}]"),
                "label key must be at most 128 characters long, not 100000".to_string()
            ),
            (
                "items[1].resource.endpoint.address".to_string(),
                "must be an IP address or a host name of at most 253 characters, not 1048576 \
                 characters"
                    .to_string()
            ),
            (
                "items[2].resource.route.rules[0].matches[0].host".to_string(),
                "must be an IP address or a host name of at most 253 characters, not 300000 \
                 characters"
                    .to_string()
            ),
            (
                "items[2].resource.route.rules[0].matches[0].headers[0].name".to_string(),
                "a header name must be at most 256 characters long, not 100000".to_string()
            ),
            (
                "items[2].resource.route.rules[0].matches[0].headers[0].value.regex".to_string(),
                format!(
                    "\"({}…\" (1001 bytes) is not a valid regular expression: unclosed group",
                    "x".repeat(63)
                )
            ),
        ]
    );
    for (field, description) in &got {
        assert!(
            err.message().contains(&format!("{field}: {description}")),
            "{}",
            err.message()
        );
    }

    // A huge invalid selector, quoted short.
    let err = client
        .list(pb::ListRequest {
            kind: pb::Kind::Service as i32,
            label_selector: format!("{}!=x", "s".repeat(200_000)),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(metadata_bytes(&err) < 1024, "{}", err.message());
    assert!(
        err.message().contains(&format!(
            "label_selector: requirement 0 (\"{}…\" (200003 bytes)): label key must be at most 128 characters long, not 200000",
            "s".repeat(64)
        )),
        "{}",
        err.message()
    );

    // A thousand bad items: the first ones told, the rest counted, in a
    // status as small.
    let items = (0..1000)
        .map(|i| svc(service(&format!("Bad-{i}-{}", "x".repeat(200)))))
        .collect();
    let err = apply(&mut client, items).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(
        metadata_bytes(&err) < 4096,
        "{} bytes",
        metadata_bytes(&err)
    );
    let got = violations(&err);
    let (last_field, last) = got.last().unwrap();
    assert_eq!(last_field, "");
    let shown = got.len() - 1;
    assert_eq!(
        *last,
        format!(
            "and {} more problems not shown: fix these and try again",
            1000 - shown
        )
    );
    assert!(shown >= 5, "{shown}");
    assert_eq!(got[0].0, "items[0].resource.service.name");
    assert!(
        err.message().contains(" more problems"),
        "{}",
        err.message()
    );
    // Nothing was written.
    assert_eq!(
        names(&mut client, pb::Kind::Service).await,
        BTreeSet::from(["web".to_string()])
    );
    server.stop().await;
}

/// A batch with field problems and references to missing resources gets
/// every problem in one answer, item by item, as a compiler reports.
async fn field_and_reference_problems_together(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    apply(&mut client, vec![svc(service("web"))]).await.unwrap();
    let mut bad_route = route("r", "nope-a");
    bad_route.rules[0].action.as_mut().unwrap().retry = Some(pb::RetryPolicy {
        attempts: 1,
        retry_on: vec![pb::RetryOn::ConnectFailure as i32],
        budget_percent: 150,
        ..Default::default()
    });
    let items = vec![
        // A field problem and a missing service in one item.
        ep(endpoint("e1", "nope-b", 0)),
        // Only a missing service.
        ep(endpoint("e2", "nope-c", 80)),
        // Refers to a service declared (validly) in the batch: fine.
        ep(endpoint("e3", "fresh", 80)),
        // Refers to a service declared, invalidly, in the batch: its
        // problem is the service's, not a missing reference.
        ep(endpoint("e4", "broken", 80)),
        svc(service("fresh")),
        svc(pb::Service {
            lb_policy: 99,
            ..service("broken")
        }),
        rt(bad_route),
        lst(listener("l", "no-route")),
    ];
    let err = apply(&mut client, items).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let missing = |kind: &str, name: &str| {
        format!("{kind} \"{name}\" does not exist (nor is it in this request)")
    };
    let expected = [
        (
            "items[0].resource.endpoint.port".to_string(),
            "must be in 1..65535, not 0".to_string(),
        ),
        (
            "items[0].resource.endpoint.service".to_string(),
            missing("service", "nope-b"),
        ),
        (
            "items[1].resource.endpoint.service".to_string(),
            missing("service", "nope-c"),
        ),
        (
            "items[5].resource.service.lb_policy".to_string(),
            "must be a known policy (0 to 5), not 99".to_string(),
        ),
        (
            "items[6].resource.route.rules[0].action.retry.budget_percent".to_string(),
            "must be in 1..100 (0 or unset means 20), not 150".to_string(),
        ),
        (
            "items[6].resource.route.rules[0].action.destinations[0].service".to_string(),
            missing("service", "nope-a"),
        ),
        (
            "items[7].resource.listener.route".to_string(),
            missing("route", "no-route"),
        ),
    ];
    assert_eq!(violations(&err), expected);
    for (field, description) in &expected {
        assert!(
            err.message().contains(&format!("{field}: {description}")),
            "{}",
            err.message()
        );
    }
    // Only missing references (no field problem): the store finds them all.
    let err = apply(
        &mut client,
        vec![
            ep(endpoint("e2", "nope-c", 80)),
            lst(listener("l", "no-route")),
        ],
    )
    .await
    .unwrap_err();
    assert_eq!(
        violations(&err),
        [
            (
                "items[0].resource.endpoint.service".to_string(),
                missing("service", "nope-c")
            ),
            {
                let (f, d) = expected[6].clone();
                (f.replace("items[7]", "items[1]"), d)
            }
        ]
    );
    assert_eq!(
        names(&mut client, pb::Kind::Service).await,
        BTreeSet::from(["web".to_string()])
    );
    server.stop().await;
}

/// A request over the size limit is RESOURCE_EXHAUSTED naming the limit;
/// one under it is answered as usual.
async fn requests_over_the_size_limit_name_it(db: TestDb) {
    let config = switchyard_control_plane::server::Config {
        max_request_bytes: 64 << 10,
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    let mut client = server.client().await;
    let mut s = service("big");
    s.labels.insert("note".into(), "x".repeat(100_000));
    let err = apply(&mut client, vec![svc(s)]).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(
        err.message().starts_with("the request message is 100"),
        "{}",
        err.message()
    );
    assert!(
        err.message()
            .contains("over the control plane's limit of 65536 bytes (64 KiB)"),
        "{}",
        err.message()
    );
    let info = err.get_details_error_info().expect("an ErrorInfo detail");
    assert_eq!(info.reason, "REQUEST_TOO_LARGE");
    assert_eq!(
        info.metadata.get("limit").map(String::as_str),
        Some("65536")
    );
    // Under the limit: the usual answer, and the connection still works.
    let mut s = service("big");
    s.labels.insert("note".into(), "x".repeat(60_000));
    let err = apply(&mut client, vec![svc(s)]).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    apply(&mut client, vec![svc(service("small"))])
        .await
        .unwrap();
    server.stop().await;
}

async fn list_page(
    client: &mut Client,
    kind: pb::Kind,
    selector: &str,
    size: u32,
    token: &str,
) -> Result<pb::ListResponse, tonic::Status> {
    client
        .list(pb::ListRequest {
            kind: kind as i32,
            label_selector: selector.into(),
            page_size: size,
            page_token: token.into(),
        })
        .await
        .map(|r| r.into_inner())
}

/// Every page of a List, as names per page; asserts only the last has no
/// next_page_token.
async fn pages(client: &mut Client, selector: &str, size: u32) -> Vec<Vec<String>> {
    let mut out = vec![];
    let mut token = String::new();
    loop {
        let page = list_page(client, pb::Kind::Service, selector, size, &token)
            .await
            .unwrap();
        out.push(
            page.resources
                .iter()
                .map(|r| switchyard::resource::pb_ref(r).unwrap().name)
                .collect(),
        );
        if page.next_page_token.is_empty() {
            return out;
        }
        assert!(out.len() < 100, "too many pages");
        token = page.next_page_token;
    }
}

/// The last page carries no next_page_token (no trailing empty page), with
/// or without a selector; tokens are opaque and bound to the kind and
/// selector that issued them.
async fn paging_ends_on_the_last_page_and_tokens_are_bound(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    let items = (0..8)
        .map(|i| {
            let mut s = service(&format!("svc-{i}"));
            if i < 4 {
                s.labels.insert("team".into(), "a".into());
            }
            svc(s)
        })
        .collect();
    apply(&mut client, items).await.unwrap();
    let name = |i: usize| format!("svc-{i}");
    // The matches fill the pages exactly and end before the last services.
    assert_eq!(
        pages(&mut client, "team=a", 2).await,
        [vec![name(0), name(1)], vec![name(2), name(3)]]
    );
    assert_eq!(
        pages(&mut client, "team=a", 3).await,
        [vec![name(0), name(1), name(2)], vec![name(3)]]
    );
    assert_eq!(
        pages(&mut client, "team", 4).await,
        [vec![name(0), name(1), name(2), name(3)]]
    );
    assert_eq!(
        pages(&mut client, "team=zz", 2).await,
        [Vec::<String>::new()]
    );
    assert_eq!(
        pages(&mut client, "", 4).await,
        [
            (0..4).map(name).collect::<Vec<_>>(),
            (4..8).map(name).collect::<Vec<_>>()
        ]
    );
    assert_eq!(
        pages(&mut client, "!team", 4).await,
        [(4..8).map(name).collect::<Vec<_>>()]
    );

    // Opaque, and bound to what issued them.
    let first = list_page(&mut client, pb::Kind::Service, "team=a", 2, "")
        .await
        .unwrap();
    let token = first.next_page_token;
    assert!(!token.contains("svc"), "{token}");
    let refused = [
        (
            pb::Kind::Endpoint,
            "team=a",
            token.clone(),
            "was issued for a List of kind service, not endpoint",
        ),
        (
            pb::Kind::Service,
            "team=b",
            token.clone(),
            "was issued for another label_selector",
        ),
        (
            pb::Kind::Service,
            "",
            token.clone(),
            "was issued for another label_selector",
        ),
        (
            pb::Kind::Service,
            "team=a",
            "svc-1".to_string(),
            "is not a page token issued by this API",
        ),
        (
            pb::Kind::Service,
            "team=a",
            "x".repeat(100_000),
            "is not a page token issued by this API",
        ),
    ];
    for (kind, selector, token, why) in refused {
        let err = list_page(&mut client, kind, selector, 2, &token)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
        let got = violations(&err);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].0, "page_token");
        assert!(got[0].1.starts_with(why), "{got:?}");
        assert!(err.message().len() < 400, "{}", err.message());
    }
    // The same selector in another spelling keeps its token.
    let next = list_page(&mut client, pb::Kind::Service, " team = a ", 2, &token)
        .await
        .unwrap();
    assert_eq!(next.resources.len(), 2);
    assert!(next.next_page_token.is_empty());
    server.stop().await;
}

/// A Watch from a revision the store never reached is OUT_OF_RANGE with
/// the current revision, at once; from the current one it waits.
async fn watch_from_the_future_is_out_of_range(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let mut client = server.client().await;
    let applied = apply(&mut client, vec![svc(service("web"))]).await.unwrap();
    let started = std::time::Instant::now();
    let err = client
        .watch(pb::WatchRequest {
            from_revision: applied.revision + 10,
            kinds: vec![],
        })
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange, "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(
        err.message().contains(&format!(
            "from_revision {} is beyond the store's current revision {}",
            applied.revision + 10,
            applied.revision
        )),
        "{}",
        err.message()
    );
    let mut watch = client
        .watch(pb::WatchRequest {
            from_revision: applied.revision,
            kinds: vec![],
        })
        .await
        .unwrap()
        .into_inner();
    let second = apply(&mut client, vec![svc(service("api"))]).await.unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(resp.revision, second.revision);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_two_postgres_replicas() {
    concurrent_writers_watcher_sees_every_revision_once(TestDb::postgres().await, 2).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_sqlite() {
    concurrent_writers_watcher_sees_every_revision_once(TestDb::sqlite(), 1).await
}

switchyard_control_plane::both_backends!(
    invalid_inputs_name_the_field_and_change_nothing,
    errors_have_their_codes,
    list_filters_by_labels_and_pages,
    watch_follows_changes_and_filters_kinds,
    dry_run_reports_without_writing,
    huge_values_give_bounded_errors,
    field_and_reference_problems_together,
    requests_over_the_size_limit_name_it,
    paging_ends_on_the_last_page_and_tokens_are_bound,
    watch_from_the_future_is_out_of_range,
);

/// Tools like grpcurl need reflection; load balancers and orchestrators need
/// the standard health service.
#[tokio::test]
async fn reflection_and_health_are_served() {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let db = TestDb::sqlite();
    let server = TestServer::start(db.url()).await;
    let channel = Channel::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();

    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut responses = ServerReflectionClient::new(channel.clone())
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .unwrap()
        .into_inner();
    let services = match responses.message().await.unwrap().unwrap().message_response {
        Some(MessageResponse::ListServicesResponse(list)) => {
            list.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
        }
        other => panic!("unexpected {other:?}"),
    };
    assert!(
        services.contains(&"switchyard.v1.OperatorService".to_string()),
        "{services:?}"
    );
    assert!(
        services.contains(&"grpc.health.v1.Health".to_string()),
        "{services:?}"
    );

    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "switchyard.v1.OperatorService"] {
        let resp = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            resp.status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32,
            "{service:?}"
        );
    }
    server.stop().await;
}
