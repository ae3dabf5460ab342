//! The store conformance suite: every test runs against a real Postgres
//! database and a real SQLite file, and both must behave the same.

use switchyard::pb;
use switchyard::resource::{Kind, Ref, Resource};
use switchyard_control_plane::store::{
    Action, Error, HealthWrite, NodeRow, Op, Removal, Store, Write,
};
use switchyard_control_plane::testing::TestDb;

fn service(name: &str) -> pb::Resource {
    pb::Resource {
        kind: Some(pb::resource::Kind::Service(pb::Service {
            name: name.into(),
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn endpoint(name: &str, service: &str, port: u32) -> pb::Resource {
    pb::Resource {
        kind: Some(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: name.into(),
            service: service.into(),
            address: "127.0.0.1".into(),
            port,
            ..Default::default()
        })),
        ..Default::default()
    }
}

fn write(r: pb::Resource) -> Write {
    write_expecting(r, None)
}

fn write_expecting(r: pb::Resource, expected_revision: Option<u64>) -> Write {
    let parsed = Resource::from_pb(&r, "item").expect("valid test resource");
    Write {
        target: parsed.reference(),
        refs: parsed.references(),
        field: format!("item.{}", parsed.kind()),
        resource: r,
        expected_revision,
    }
}

fn removal(kind: Kind, name: &str) -> Removal {
    Removal {
        target: Ref::new(kind, name),
        field: "item".into(),
        expected_revision: None,
    }
}

fn revision_of(r: &pb::Resource) -> u64 {
    match r.kind.as_ref().unwrap() {
        pb::resource::Kind::Service(s) => s.revision,
        pb::resource::Kind::Endpoint(e) => e.revision,
        pb::resource::Kind::Route(r) => r.revision,
        pb::resource::Kind::Listener(l) => l.revision,
    }
}

async fn apply_reads_back_and_counts_revisions(db: TestDb) {
    let store = db.store().await;
    assert_eq!(store.revision().await.unwrap(), 0);
    let applied = store
        .apply(
            vec![write(service("web")), write(endpoint("web-1", "web", 8080))],
            false,
        )
        .await
        .unwrap();
    assert_eq!(applied.revision, 1);
    assert_eq!(applied.results[0].1, Action::Created);
    let got = store
        .get(&Ref::new(Kind::Endpoint, "web-1"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(revision_of(&got), 1);
    let page = store.list(Kind::Endpoint, "", 10).await.unwrap();
    assert_eq!(
        (page.resources.len(), page.revision, page.more),
        (1, 1, false)
    );

    // The same content again is unchanged and takes no revision.
    let again = store
        .apply(vec![write(endpoint("web-1", "web", 8080))], false)
        .await
        .unwrap();
    assert_eq!(again.revision, 1);
    assert_eq!(
        again.results[0],
        (Ref::new(Kind::Endpoint, "web-1"), Action::Unchanged, 1)
    );
    // A change takes the next one.
    let changed = store
        .apply(vec![write(endpoint("web-1", "web", 9090))], false)
        .await
        .unwrap();
    assert_eq!(changed.revision, 2);
    assert_eq!(changed.results[0].1, Action::Configured);
    assert_eq!(
        store
            .get(&Ref::new(Kind::Service, "web"))
            .await
            .unwrap()
            .map(|r| revision_of(&r)),
        Some(1)
    );
}

async fn stale_expected_revision_aborts_and_writes_nothing(db: TestDb) {
    let store = db.store().await;
    store
        .apply(vec![write(service("web"))], false)
        .await
        .unwrap();
    store
        .apply(vec![write(endpoint("web-1", "web", 1))], false)
        .await
        .unwrap();
    // The batch holds a fine write and a stale one: neither lands.
    let err = store
        .apply(
            vec![
                write(service("other")),
                write_expecting(endpoint("web-1", "web", 2), Some(1)),
            ],
            false,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 1,
                actual: Some(2),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(store.revision().await.unwrap(), 2);
    assert!(
        store
            .get(&Ref::new(Kind::Service, "other"))
            .await
            .unwrap()
            .is_none()
    );
    // "Must not exist" fails on an existing resource.
    let err = store
        .apply(vec![write_expecting(service("web"), Some(0))], false)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: 0,
                actual: Some(1),
                ..
            }
        ),
        "{err}"
    );
    // The right revision passes.
    let ok = store
        .apply(
            vec![write_expecting(endpoint("web-1", "web", 3), Some(2))],
            false,
        )
        .await
        .unwrap();
    assert_eq!(ok.revision, 3);
}

async fn missing_references_are_invalid_and_write_nothing(db: TestDb) {
    let store = db.store().await;
    let err = store
        .apply(
            vec![write(service("web")), write(endpoint("db-1", "db", 5432))],
            false,
        )
        .await
        .unwrap_err();
    match err {
        Error::Invalid(invalid) => {
            assert_eq!(invalid.violations[0].field, "item.endpoint.service");
            assert!(
                invalid.violations[0]
                    .reason
                    .contains("service \"db\" does not exist")
            );
        }
        other => panic!("expected Invalid, got {other}"),
    }
    assert_eq!(store.revision().await.unwrap(), 0);
    assert!(
        store
            .get(&Ref::new(Kind::Service, "web"))
            .await
            .unwrap()
            .is_none()
    );
    // A batch may create a service and what names it together.
    store
        .apply(
            vec![write(endpoint("db-1", "db", 5432)), write(service("db"))],
            false,
        )
        .await
        .unwrap();
}

async fn deleting_a_referenced_service_fails(db: TestDb) {
    let store = db.store().await;
    store
        .apply(
            vec![write(service("web")), write(endpoint("web-1", "web", 80))],
            false,
        )
        .await
        .unwrap();
    let err = store
        .delete(vec![removal(Kind::Service, "web")], false)
        .await
        .unwrap_err();
    match &err {
        Error::Referenced { by, .. } => assert_eq!(by, &[Ref::new(Kind::Endpoint, "web-1")]),
        other => panic!("expected Referenced, got {other}"),
    }
    assert!(
        store
            .get(&Ref::new(Kind::Service, "web"))
            .await
            .unwrap()
            .is_some()
    );
    assert_eq!(store.revision().await.unwrap(), 1);
    let err = store
        .delete(vec![removal(Kind::Route, "nope")], false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::NotFound(_)), "{err}");
    // Both together leave nothing dangling.
    let rev = store
        .delete(
            vec![
                removal(Kind::Service, "web"),
                removal(Kind::Endpoint, "web-1"),
            ],
            false,
        )
        .await
        .unwrap();
    assert_eq!(rev, 2);
    assert!(
        store
            .list(Kind::Endpoint, "", 10)
            .await
            .unwrap()
            .resources
            .is_empty()
    );
}

async fn dry_run_writes_nothing(db: TestDb) {
    let store = db.store().await;
    let applied = store
        .apply(vec![write(service("web"))], true)
        .await
        .unwrap();
    assert_eq!(applied.results[0].1, Action::Created);
    assert_eq!(applied.revision, 0);
    assert_eq!(store.revision().await.unwrap(), 0);
    assert!(
        store
            .get(&Ref::new(Kind::Service, "web"))
            .await
            .unwrap()
            .is_none()
    );
    assert!(store.changes(0, 10).await.unwrap().is_empty());
}

async fn change_log_replays_in_order_and_compacts(db: TestDb) {
    let store = db.store().await;
    store
        .apply(vec![write(service("a")), write(service("b"))], false)
        .await
        .unwrap();
    store
        .apply(vec![write(endpoint("a-1", "a", 1))], false)
        .await
        .unwrap();
    store
        .delete(vec![removal(Kind::Service, "b")], false)
        .await
        .unwrap();
    let log = store.changes(0, 100).await.unwrap();
    let summary: Vec<_> = log
        .iter()
        .map(|c| (c.revision, c.op, c.target.to_string()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (1, Op::Upsert, "service/a".into()),
            (1, Op::Upsert, "service/b".into()),
            (2, Op::Upsert, "endpoint/a-1".into()),
            (3, Op::Delete, "service/b".into()),
        ]
    );
    assert_eq!(log[2].resource.as_ref().map(revision_of), Some(2));
    assert!(log[3].resource.is_none());
    // Reading by revision range never splits a revision.
    assert_eq!(store.changes(0, 1).await.unwrap().len(), 2);

    assert_eq!(store.compact(1).await.unwrap(), 2);
    let err = store.changes(1, 10).await.unwrap_err();
    assert!(
        matches!(
            err,
            Error::Compacted {
                requested: 1,
                horizon: 2
            }
        ),
        "{err}"
    );
    assert_eq!(store.changes(2, 10).await.unwrap().len(), 1);
}

async fn list_pages_in_name_order(db: TestDb) {
    let store = db.store().await;
    let names = ["e", "a", "d", "c", "b"];
    store
        .apply(names.iter().map(|n| write(service(n))).collect(), false)
        .await
        .unwrap();
    let first = store.list(Kind::Service, "", 2).await.unwrap();
    let name = |r: &pb::Resource| switchyard::resource::pb_ref(r).unwrap().name;
    assert_eq!(
        first.resources.iter().map(name).collect::<Vec<_>>(),
        ["a", "b"]
    );
    assert!(first.more);
    let last = store.list(Kind::Service, "d", 2).await.unwrap();
    assert_eq!(last.resources.iter().map(name).collect::<Vec<_>>(), ["e"]);
    assert!(!last.more);
}

async fn reopened_store_keeps_writes_and_revisions(db: TestDb) {
    let store = db.store().await;
    store
        .apply(vec![write(service("web"))], false)
        .await
        .unwrap();
    store
        .apply(vec![write(endpoint("web-1", "web", 80))], false)
        .await
        .unwrap();
    store.close().await;
    let store = db.store().await;
    assert_eq!(store.revision().await.unwrap(), 2);
    assert!(
        store
            .get(&Ref::new(Kind::Endpoint, "web-1"))
            .await
            .unwrap()
            .is_some()
    );
    let next = store
        .apply(vec![write(service("api"))], false)
        .await
        .unwrap();
    assert_eq!(next.revision, 3, "revisions continue without reuse");
}

async fn repeated_resource_in_a_batch_is_invalid(db: TestDb) {
    let store = db.store().await;
    let err = store
        .apply(vec![write(service("web")), write(service("web"))], false)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Invalid(_)), "{err}");
    assert_eq!(store.revision().await.unwrap(), 0);
}

fn owned(name: &str, node: &str) -> pb::Resource {
    let mut r = endpoint(name, "web", 80);
    if let Some(pb::resource::Kind::Endpoint(e)) = &mut r.kind {
        e.node = node.into();
    }
    r
}

fn health(endpoint: &str, node: &str, health: pb::Health) -> HealthWrite {
    HealthWrite {
        endpoint: endpoint.into(),
        node: node.into(),
        health,
        reason: format!("{health:?}"),
        at_ms: 1_700_000_000_123,
    }
}

fn endpoint_health(r: Option<pb::Resource>) -> (pb::Health, String, u64) {
    match r.and_then(|r| r.kind) {
        Some(pb::resource::Kind::Endpoint(e)) => (e.health(), e.health_reason, e.revision),
        other => panic!("not an endpoint: {other:?}"),
    }
}

async fn health_writes_take_one_revision_and_respect_ownership(db: TestDb) {
    let store = db.store().await;
    store
        .apply(
            vec![
                write(service("web")),
                write(owned("a", "n1")),
                write(owned("b", "n1")),
                write(owned("c", "n2")),
            ],
            false,
        )
        .await
        .unwrap();
    let done = store
        .write_health(vec![
            health("a", "n1", pb::Health::Healthy),
            health("b", "n1", pb::Health::Unhealthy),
            // Owned by n2: skipped. Missing: skipped.
            health("c", "n1", pb::Health::Healthy),
            health("gone", "n1", pb::Health::Healthy),
        ])
        .await
        .unwrap();
    assert_eq!(done.revision, Some(2), "one revision for the whole batch");
    assert_eq!(done.written, vec!["a".to_string(), "b".to_string()]);
    let get = |name: &str| {
        let target = Ref::new(Kind::Endpoint, name);
        let store = store.clone();
        async move { store.get(&target).await }
    };
    assert_eq!(
        endpoint_health(get("a").await.unwrap()),
        (pb::Health::Healthy, "Healthy".into(), 2)
    );
    assert_eq!(
        endpoint_health(get("b").await.unwrap()).0,
        pb::Health::Unhealthy
    );
    assert_eq!(
        endpoint_health(get("c").await.unwrap()),
        (pb::Health::Unknown, String::new(), 1)
    );
    // The change log carries the new bodies, so every replica learns them.
    let changes = store.changes(1, 10).await.unwrap();
    assert_eq!(changes.len(), 2);
    assert!(
        changes
            .iter()
            .all(|c| c.revision == 2 && c.op == Op::Upsert)
    );

    // The same health again changes nothing and takes no revision.
    let again = store
        .write_health(vec![health("a", "n1", pb::Health::Healthy)])
        .await
        .unwrap();
    assert_eq!(again.revision, None);
    assert_eq!(store.revision().await.unwrap(), 2);

    // An operator re-applying the endpoint keeps its reported health.
    let mut changed = owned("a", "n1");
    if let Some(pb::resource::Kind::Endpoint(e)) = &mut changed.kind {
        e.weight = 7;
    }
    store.apply(vec![write(changed)], false).await.unwrap();
    assert_eq!(
        endpoint_health(get("a").await.unwrap()).0,
        pb::Health::Healthy
    );
}

async fn stale_nodes_are_those_not_seen_since(db: TestDb) {
    let store = db.store().await;
    let row = |id: &str, last_seen_ms: i64, connected: bool| NodeRow {
        id: id.into(),
        labels: Default::default(),
        agent_version: "test".into(),
        applied_revision: 0,
        connected,
        replica: "r1".into(),
        last_seen_ms,
        session: 1,
        nack: None,
    };
    store
        .record_nodes(vec![
            row("old", 1_000, false),
            row("zombie", 2_000, true),
            row("fresh", 9_000, true),
        ])
        .await
        .unwrap();
    assert_eq!(
        store.stale_nodes(5_000).await.unwrap(),
        vec!["old".to_string(), "zombie".to_string()]
    );
}

switchyard_control_plane::both_backends!(
    health_writes_take_one_revision_and_respect_ownership,
    stale_nodes_are_those_not_seen_since,
    apply_reads_back_and_counts_revisions,
    stale_expected_revision_aborts_and_writes_nothing,
    missing_references_are_invalid_and_write_nothing,
    deleting_a_referenced_service_fails,
    dry_run_writes_nothing,
    change_log_replays_in_order_and_compacts,
    list_pages_in_name_order,
    reopened_store_keeps_writes_and_revisions,
    repeated_resource_in_a_batch_is_invalid,
);
