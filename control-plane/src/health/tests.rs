use super::*;
use crate::store::Dump;

/// A state with endpoints `a` and `b` owned by node `n1` and `c` by `n2`.
fn state() -> State {
    let endpoint = |name: &str, node: &str| pb::Resource {
        kind: Some(pb::resource::Kind::Endpoint(pb::Endpoint {
            name: name.into(),
            service: "web".into(),
            node: node.into(),
            ..Default::default()
        })),
        ..Default::default()
    };
    State::from_dump(Dump {
        revision: 1,
        horizon: 0,
        resources: vec![
            endpoint("a", "n1"),
            endpoint("b", "n1"),
            endpoint("c", "n2"),
        ],
    })
}

/// Where the agent of the reports calls from.
const ADDR: &str = "10.0.0.1:5000";

fn report(entries: &[(&str, pb::Health)]) -> pb::HealthReport {
    pb::HealthReport {
        endpoints: entries
            .iter()
            .map(|(name, health)| pb::EndpointHealth {
                endpoint: name.to_string(),
                health: *health as i32,
                reason: format!("{health:?}"),
                observed_at: None,
            })
            .collect(),
    }
}

fn pending(r: &Reporter) -> Vec<(String, pb::Health)> {
    let mut p: Vec<_> = r
        .inner
        .lock()
        .unwrap()
        .pending
        .values()
        .map(|w| (w.endpoint.clone(), w.health))
        .collect();
    p.sort();
    p
}

fn undamped() -> Reporter {
    let damping = Damping {
        half_life: Duration::ZERO,
        ..Damping::default()
    };
    Reporter::new(damping, Duration::from_millis(50), Duration::from_secs(30))
}

#[test]
fn newest_report_per_endpoint_is_queued_and_unchanged_health_is_not() {
    let r = undamped();
    let s = state();
    // `a` is stored unknown: reporting unknown is refused, healthy is queued.
    r.report(
        "n1",
        ADDR,
        &report(&[("a", pb::Health::Healthy), ("b", pb::Health::Healthy)]),
        &s,
    )
    .unwrap();
    r.report("n1", ADDR, &report(&[("a", pb::Health::Unhealthy)]), &s)
        .unwrap();
    assert_eq!(
        pending(&r),
        vec![
            ("a".into(), pb::Health::Unhealthy),
            ("b".into(), pb::Health::Healthy)
        ]
    );
    // A report for an endpoint that no longer exists is dropped quietly.
    r.report("n1", ADDR, &report(&[("gone", pb::Health::Healthy)]), &s)
        .unwrap();
    assert_eq!(pending(&r).len(), 2);
}

#[test]
fn another_nodes_endpoint_refuses_the_whole_report() {
    let r = undamped();
    let err = r
        .report(
            "n1",
            ADDR,
            &report(&[("a", pb::Health::Healthy), ("c", pb::Health::Healthy)]),
            &state(),
        )
        .unwrap_err();
    assert!(
        matches!(&err, Error::NotOwned { field, endpoint, node }
            if field == "health.endpoints[1]" && endpoint == "c" && node == "n1"),
        "{err:?}"
    );
    assert!(
        pending(&r).is_empty(),
        "nothing of a refused report is written"
    );
}

#[test]
fn unknown_health_and_bad_names_are_invalid_and_named() {
    let r = undamped();
    let err = r
        .report(
            "n1",
            ADDR,
            &report(&[("a", pb::Health::Unknown), ("B!", pb::Health::Healthy)]),
            &state(),
        )
        .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("health.endpoints[0].health"), "{text}");
    assert!(text.contains("health.endpoints[1].endpoint"), "{text}");
    assert!(pending(&r).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_flapping_endpoint_is_held_unhealthy_then_released() {
    let damping = Damping {
        half_life: Duration::from_secs(10),
        suppress: 3.0,
        reuse: 1.0,
    };
    let r = Reporter::new(damping, Duration::from_millis(50), Duration::from_secs(30));
    let s = state();
    let flip = |h| report(&[("a", h)]);
    r.report("n1", ADDR, &flip(pb::Health::Healthy), &s)
        .unwrap();
    r.report("n1", ADDR, &flip(pb::Health::Unhealthy), &s)
        .unwrap();
    assert_eq!(pending(&r), vec![("a".into(), pb::Health::Unhealthy)]);
    // The third change reaches the threshold: held unhealthy, whatever it says.
    r.report("n1", ADDR, &flip(pb::Health::Healthy), &s)
        .unwrap();
    assert_eq!(pending(&r), vec![("a".into(), pb::Health::Unhealthy)]);
    let reason = r.inner.lock().unwrap().pending["a"].reason.clone();
    assert!(reason.starts_with("flapping"), "{reason}");
    r.inner.lock().unwrap().pending.clear();
    for h in [pb::Health::Unhealthy, pb::Health::Healthy] {
        r.report("n1", ADDR, &flip(h), &s).unwrap();
    }
    assert!(pending(&r).is_empty(), "held reports are not written");
    assert_eq!(r.stats.damped.load(Ordering::Relaxed), 3);

    // The penalty (5) must halve about 2.3 times to drop below 1.
    tokio::time::advance(Duration::from_secs(20)).await;
    r.inner.lock().unwrap().release(Instant::now(), &damping);
    assert!(pending(&r).is_empty(), "still held after 20 s");
    tokio::time::advance(Duration::from_secs(10)).await;
    r.inner.lock().unwrap().release(Instant::now(), &damping);
    assert_eq!(
        pending(&r),
        vec![("a".into(), pb::Health::Healthy)],
        "released with the latest report"
    );
}

/// Reports are recorded as the reporting node's, from its address; a lease
/// expiry as the control plane's own write.
#[tokio::test]
async fn writes_are_attributed_to_the_node_or_to_the_control_plane() {
    use crate::grpc::write;
    use crate::store::{Author, NodeRow};
    use crate::testing::{TestDb, fixtures};

    let db = TestDb::sqlite();
    let store = db.store().await;
    let mut owned = fixtures::endpoint("a", "web", 80);
    owned.node = "n1".into();
    let writes = [
        pb::Resource {
            kind: Some(fixtures::service("web")),
            ..Default::default()
        },
        pb::Resource {
            kind: Some(pb::resource::Kind::Endpoint(owned)),
            ..Default::default()
        },
    ]
    .iter()
    .map(|r| write(r, "item", None).unwrap())
    .collect();
    let author = Author::new("token/ops", "127.0.0.1:1");
    store.apply(writes, false, &author).await.unwrap();
    let last_change = |store: crate::store::Any| async move {
        let r = store.get(&Ref::new(Kind::Endpoint, "a")).await.unwrap();
        let r = r.unwrap();
        let Some(pb::resource::Kind::Endpoint(e)) = &r.kind else {
            panic!("not an endpoint")
        };
        let a = r.last_change.clone().unwrap();
        (e.health(), a.principal, a.address)
    };

    // The agent of n1 reports from ADDR.
    let reporter = Reporter::new(
        Damping {
            half_life: Duration::ZERO,
            ..Damping::default()
        },
        Duration::from_millis(10),
        Duration::from_secs(1),
    );
    let head = Head::new(store.revision().await.unwrap());
    let state = State::from_dump(store.dump().await.unwrap());
    reporter
        .report("n1", ADDR, &report(&[("a", pb::Health::Healthy)]), &state)
        .unwrap();
    assert!(reporter.flush(&store, &head).await);
    assert_eq!(
        last_change(store.clone()).await,
        (pb::Health::Healthy, "node/n1".into(), ADDR.into())
    );

    // Then n1 falls silent past its lease: the control plane marks its
    // endpoint unknown, on its own authority.
    store
        .record_nodes(vec![NodeRow {
            id: "n1".into(),
            labels: Default::default(),
            agent_version: "test".into(),
            applied_revision: 0,
            connected: false,
            replica: "r1".into(),
            last_seen_ms: 1_000,
            session: 1,
            nack: None,
            instance: "".into(),
            persist: None,
        }])
        .await
        .unwrap();
    let before = head.current();
    let (_keep, state) = watch::channel(Arc::new(State::from_dump(store.dump().await.unwrap())));
    let shutdown = CancellationToken::new();
    let mut written = head.subscribe();
    let wait = async {
        written.wait_for(|r| *r > before).await.unwrap();
        shutdown.cancel();
    };
    tokio::time::timeout(
        Duration::from_secs(10),
        futures::future::join(reporter.run(&store, &head, state, &shutdown), wait),
    )
    .await
    .expect("the lease expiry is written");
    assert_eq!(
        last_change(store.clone()).await,
        (pb::Health::Unknown, "control-plane".into(), String::new())
    );
    store.close().await;
}
