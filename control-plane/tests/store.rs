//! The store conformance suite: every test runs against a real Postgres
//! database and a real SQLite file, and both must behave the same.

use switchyard::pb;
use switchyard::resource::{Kind, Ref, Resource};
use switchyard_control_plane::store::{
    Action, Author, Bootstrap, Error, HealthWrite, NodeRow, Op, Removal, Role, Store, TokenRow,
    Write,
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

/// The author of the writes of tests that are not about authors.
fn operator() -> Author {
    Author::new("token/ops", "127.0.0.1:40000")
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
            &operator(),
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
        .apply(
            vec![write(endpoint("web-1", "web", 8080))],
            false,
            &operator(),
        )
        .await
        .unwrap();
    assert_eq!(again.revision, 1);
    assert_eq!(
        again.results[0],
        (Ref::new(Kind::Endpoint, "web-1"), Action::Unchanged, 1)
    );
    // A change takes the next one.
    let changed = store
        .apply(
            vec![write(endpoint("web-1", "web", 9090))],
            false,
            &operator(),
        )
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
        .apply(vec![write(service("web"))], false, &operator())
        .await
        .unwrap();
    store
        .apply(vec![write(endpoint("web-1", "web", 1))], false, &operator())
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
            &operator(),
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
        .apply(
            vec![write_expecting(service("web"), Some(0))],
            false,
            &operator(),
        )
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
            &operator(),
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
            &operator(),
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
            &operator(),
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
            &operator(),
        )
        .await
        .unwrap();
    let err = store
        .delete(vec![removal(Kind::Service, "web")], false, &operator())
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
        .delete(vec![removal(Kind::Route, "nope")], false, &operator())
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
            &operator(),
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
        .apply(vec![write(service("web"))], true, &operator())
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
        .apply(
            vec![write(service("a")), write(service("b"))],
            false,
            &operator(),
        )
        .await
        .unwrap();
    store
        .apply(vec![write(endpoint("a-1", "a", 1))], false, &operator())
        .await
        .unwrap();
    store
        .delete(vec![removal(Kind::Service, "b")], false, &operator())
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
        .apply(
            names.iter().map(|n| write(service(n))).collect(),
            false,
            &operator(),
        )
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
        .apply(vec![write(service("web"))], false, &operator())
        .await
        .unwrap();
    store
        .apply(
            vec![write(endpoint("web-1", "web", 80))],
            false,
            &operator(),
        )
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
        .apply(vec![write(service("api"))], false, &operator())
        .await
        .unwrap();
    assert_eq!(next.revision, 3, "revisions continue without reuse");
}

async fn repeated_resource_in_a_batch_is_invalid(db: TestDb) {
    let store = db.store().await;
    let err = store
        .apply(
            vec![write(service("web")), write(service("web"))],
            false,
            &operator(),
        )
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
        address: format!("10.0.0.1:{}", 5000 + node.len()),
        by_control_plane: false,
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
            &operator(),
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
    store
        .apply(vec![write(changed)], false, &operator())
        .await
        .unwrap();
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
        instance: "".into(),
        persist: None,
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

fn ms(at: Option<&prost_types::Timestamp>) -> i64 {
    let at = at.expect("a time");
    at.seconds * 1000 + i64::from(at.nanos) / 1_000_000
}

/// The author of `r`'s last change: principal, address, Unix milliseconds.
fn last_change(r: Option<&pb::Resource>) -> (String, String, i64) {
    let a = r
        .expect("the resource")
        .last_change
        .as_ref()
        .expect("a last change");
    (a.principal.clone(), a.address.clone(), ms(a.at.as_ref()))
}

/// Who made each change-log entry after `after`: revision, name, principal, address.
async fn authors(store: &impl Store, after: u64) -> Vec<(u64, String, String, String)> {
    store
        .changes(after, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|c| {
            let a = c.author.expect("an author");
            (c.revision, c.target.name, a.principal, a.address)
        })
        .collect()
}

async fn writes_record_their_author_across_a_restart(db: TestDb) {
    let alice = Author::new("token/alice", "10.1.1.1:1111");
    let bob = Author::new("token/bob", "[2001:db8::2]:2222");
    let store = db.store().await;
    let before = switchyard_control_plane::store::now_ms();
    store
        .apply(
            vec![write(service("web")), write(endpoint("web-1", "web", 80))],
            false,
            &alice,
        )
        .await
        .unwrap();
    store
        .apply(
            vec![write(endpoint("web-1", "web", 81)), write(service("api"))],
            false,
            &bob,
        )
        .await
        .unwrap();
    store
        .delete(vec![removal(Kind::Service, "api")], false, &bob)
        .await
        .unwrap();
    let after = switchyard_control_plane::store::now_ms();

    let check = |store: switchyard_control_plane::store::Any| async move {
        let web = store.get(&Ref::new(Kind::Service, "web")).await.unwrap();
        let (who, from, at) = last_change(web.as_ref());
        assert_eq!(
            (who.as_str(), from.as_str()),
            ("token/alice", "10.1.1.1:1111")
        );
        assert!(
            (before..=after).contains(&at),
            "{before} <= {at} <= {after}"
        );
        let web1 = store.get(&Ref::new(Kind::Endpoint, "web-1")).await.unwrap();
        let (who, from, at) = last_change(web1.as_ref());
        assert_eq!(
            (who.as_str(), from.as_str()),
            ("token/bob", "[2001:db8::2]:2222")
        );
        assert!(
            (before..=after).contains(&at),
            "{before} <= {at} <= {after}"
        );
        let services = store.list(Kind::Service, "", 10).await.unwrap().resources;
        assert_eq!(services.len(), 1);
        assert_eq!(last_change(services.first()).0, "token/alice");
        let endpoints = store.list(Kind::Endpoint, "", 10).await.unwrap().resources;
        assert_eq!(last_change(endpoints.first()).0, "token/bob");
        let (alice, bob) = (
            ("token/alice".to_string(), "10.1.1.1:1111".to_string()),
            ("token/bob".to_string(), "[2001:db8::2]:2222".to_string()),
        );
        let row = |rev: u64, name: &str, (p, a): &(String, String)| {
            (rev, name.to_string(), p.clone(), a.clone())
        };
        assert_eq!(
            authors(&store, 0).await,
            vec![
                row(1, "web", &alice),
                row(1, "web-1", &alice),
                row(2, "web-1", &bob),
                row(2, "api", &bob),
                row(3, "api", &bob),
            ]
        );
        for c in store.changes(0, 100).await.unwrap() {
            let at = ms(c.author.as_ref().and_then(|a| a.at.as_ref()));
            assert!(
                (before..=after).contains(&at),
                "{before} <= {at} <= {after}"
            );
            // The author is beside the resource, not in it.
            assert!(c.resource.is_none_or(|r| r.last_change.is_none()));
        }
        // Agents are fed from the dump: no audit trail in it.
        let dump = store.dump().await.unwrap();
        assert_eq!(dump.resources.len(), 2);
        assert!(dump.resources.iter().all(|r| r.last_change.is_none()));
        store
    };
    let store = check(store).await;

    // Applying back what Get returned (last change included) by someone
    // else changes nothing: the author is not part of the content.
    let web1 = store
        .get(&Ref::new(Kind::Endpoint, "web-1"))
        .await
        .unwrap()
        .unwrap();
    let again = store
        .apply(vec![write(web1)], false, &operator())
        .await
        .unwrap();
    assert_eq!(again.results[0].1, Action::Unchanged);
    assert_eq!(again.revision, 3);

    // The record survives a restart.
    store.close().await;
    let store = check(db.store().await).await;
    store.close().await;
}

async fn health_writes_are_attributed_to_the_node_or_the_control_plane(db: TestDb) {
    let store = db.store().await;
    store
        .apply(
            vec![
                write(service("web")),
                write(owned("a", "n1")),
                write(owned("b", "n22")),
            ],
            false,
            &operator(),
        )
        .await
        .unwrap();
    let mut report = health("a", "n1", pb::Health::Healthy);
    report.address = "10.9.8.7:6543".into();
    store.write_health(vec![report]).await.unwrap();
    let get = |name: &str| {
        let target = Ref::new(Kind::Endpoint, name);
        let store = store.clone();
        async move { store.get(&target).await.unwrap() }
    };
    let (who, from, _) = last_change(get("a").await.as_ref());
    assert_eq!((who.as_str(), from.as_str()), ("node/n1", "10.9.8.7:6543"));
    assert_eq!(last_change(get("b").await.as_ref()).0, "token/ops");
    assert_eq!(
        authors(&store, 1).await,
        vec![(2, "a".into(), "node/n1".into(), "10.9.8.7:6543".into())]
    );

    // The node's lease expired: the control plane marks both of its
    // endpoints itself, in one write with a node's report.
    let expired = HealthWrite {
        address: String::new(),
        by_control_plane: true,
        ..health("a", "n1", pb::Health::Unknown)
    };
    let reported = health("b", "n22", pb::Health::Unhealthy);
    store.write_health(vec![expired, reported]).await.unwrap();
    let (who, from, _) = last_change(get("a").await.as_ref());
    assert_eq!((who.as_str(), from.as_str()), ("control-plane", ""));
    let (who, from, _) = last_change(get("b").await.as_ref());
    assert_eq!((who.as_str(), from.as_str()), ("node/n22", "10.0.0.1:5003"));
    assert_eq!(
        authors(&store, 2).await,
        vec![
            (3, "a".into(), "control-plane".into(), String::new()),
            (3, "b".into(), "node/n22".into(), "10.0.0.1:5003".into()),
        ]
    );
}

fn token(name: &str, role: Role, node: &str) -> TokenRow {
    TokenRow {
        name: name.into(),
        role,
        node: node.into(),
        hash: [name.len() as u8; 32],
        created_at_ms: 1_700_000_000_000 + name.len() as i64,
        created_by: "token/root".into(),
        revoked_at_ms: None,
    }
}

async fn tokens_are_created_listed_and_revoked(db: TestDb) {
    let store = db.store().await;
    assert_eq!(store.token_epoch().await.unwrap(), 0);
    assert!(store.tokens().await.unwrap().is_empty());
    let ops = token("ops", Role::Admin, "");
    let edge = token("edge-1", Role::Agent, "edge-1");
    let viewer = token("viewer", Role::Reader, "");
    let mut epoch = 0;
    for t in [&ops, &edge, &viewer] {
        store.create_token(t.clone()).await.unwrap();
        let now = store.token_epoch().await.unwrap();
        assert!(now > epoch, "a token write moves the epoch");
        epoch = now;
    }
    assert_eq!(
        store.tokens().await.unwrap(),
        vec![edge.clone(), ops.clone(), viewer.clone()],
        "every field kept, in name order"
    );

    // A taken name is refused and nothing moves.
    let err = store
        .create_token(token("ops", Role::Reader, ""))
        .await
        .unwrap_err();
    assert!(matches!(&err, Error::Exists(n) if n == "ops"), "{err}");
    assert_eq!(err.to_string(), r#"token "ops" already exists"#);
    assert_eq!(store.token_epoch().await.unwrap(), epoch);
    assert_eq!(store.tokens().await.unwrap()[1].role, Role::Admin);

    // Revoking records the time once.
    let revoked = store.revoke_token("viewer", 5_000).await.unwrap();
    assert_eq!(revoked.revoked_at_ms, Some(5_000));
    assert_eq!(revoked.name, "viewer");
    let now = store.token_epoch().await.unwrap();
    assert!(now > epoch);
    epoch = now;
    let again = store.revoke_token("viewer", 9_000).await.unwrap();
    assert_eq!(
        again.revoked_at_ms,
        Some(5_000),
        "the first revocation stands"
    );
    let err = store.revoke_token("nobody", 9_000).await.unwrap_err();
    assert!(
        matches!(&err, Error::TokenNotFound(n) if n == "nobody"),
        "{err}"
    );
    assert_eq!(err.to_string(), r#"token "nobody" not found"#);

    // A revoked token's name is never given to another.
    let err = store
        .create_token(token("viewer", Role::Admin, ""))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Exists(_)), "{err}");

    // Tokens and the epoch survive a restart.
    let epoch = store.token_epoch().await.unwrap().max(epoch);
    store.close().await;
    let store = db.store().await;
    assert_eq!(store.token_epoch().await.unwrap(), epoch);
    let tokens = store.tokens().await.unwrap();
    assert_eq!(
        tokens.iter().map(|t| t.name.as_str()).collect::<Vec<_>>(),
        ["edge-1", "ops", "viewer"]
    );
    assert_eq!(tokens[2].revoked_at_ms, Some(5_000));
    assert_eq!(tokens[0].hash, edge.hash);
    store.close().await;
}

async fn bootstrap_creates_the_first_token_only(db: TestDb) {
    let store = db.store().await;
    let root = token("root", Role::Admin, "");

    // The secret could not be written: nothing is stored.
    let err = store
        .bootstrap_token(root.clone(), || Err("disk full".into()))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, Error::Bootstrap(r) if r == "disk full"),
        "{err}"
    );
    assert!(store.tokens().await.unwrap().is_empty());

    let mut called = false;
    let done = store
        .bootstrap_token(root.clone(), || {
            called = true;
            Ok(())
        })
        .await
        .unwrap();
    assert_eq!(done, Bootstrap::Created);
    assert!(
        called,
        "the caller writes its secret inside the transaction"
    );
    assert_eq!(store.tokens().await.unwrap(), vec![root.clone()]);
    let epoch = store.token_epoch().await.unwrap();

    // Started again (another replica, a restart): tokens exist, nothing
    // is written and the secret is not written again.
    let done = store
        .bootstrap_token(token("other", Role::Admin, ""), || {
            panic!("created() called although tokens exist")
        })
        .await
        .unwrap();
    assert_eq!(done, Bootstrap::Exists { tokens: 1 });
    assert_eq!(store.tokens().await.unwrap(), vec![root]);
    assert_eq!(store.token_epoch().await.unwrap(), epoch);
    store.close().await;
}

async fn racing_bootstraps_create_exactly_one_token(db: TestDb) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    const ATTEMPTS: usize = 8;
    // Two independent handles, as two replicas (or two processes on one
    // SQLite file) would have.
    let stores = [db.store().await, db.store().await];
    let calls = Arc::new(AtomicUsize::new(0));
    let start = Arc::new(tokio::sync::Barrier::new(ATTEMPTS));
    let mut attempts = tokio::task::JoinSet::new();
    for i in 0..ATTEMPTS {
        let store = stores[i % 2].clone();
        let (calls, start) = (calls.clone(), start.clone());
        attempts.spawn(async move {
            start.wait().await;
            let row = token(&format!("root-{i}"), Role::Admin, "");
            store
                .bootstrap_token(row, || {
                    calls.fetch_add(1, Ordering::SeqCst);
                    // A slow secret file (fsync): the others have all
                    // begun meanwhile, so they really race this one.
                    tokio::task::block_in_place(|| {
                        std::thread::sleep(std::time::Duration::from_millis(200))
                    });
                    Ok(())
                })
                .await
                .unwrap()
        });
    }
    let outcomes = tokio::time::timeout(std::time::Duration::from_secs(60), attempts.join_all())
        .await
        .expect("bootstraps finish");
    let created = outcomes
        .iter()
        .filter(|o| **o == Bootstrap::Created)
        .count();
    assert_eq!(created, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .all(|o| matches!(o, Bootstrap::Created | Bootstrap::Exists { tokens: 1 })),
        "{outcomes:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    for store in &stores {
        assert_eq!(store.tokens().await.unwrap().len(), 1);
    }
    for store in stores {
        store.close().await;
    }
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
    writes_record_their_author_across_a_restart,
    health_writes_are_attributed_to_the_node_or_the_control_plane,
    tokens_are_created_listed_and_revoked,
    bootstrap_creates_the_first_token_only,
    racing_bootstraps_create_exactly_one_token,
);
