//! The `switchyard-cp` binary as a real process: crash safety under
//! `kill -9`, graceful shutdown on SIGTERM, and a clear error on bad flags.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use switchyard::pb;
use switchyard::pb::operator_service_client::OperatorServiceClient;
use switchyard_control_plane::store::Store;
use switchyard_control_plane::testing::{CpProcess, TestDb};
use tokio::process::Command;

async fn start(database_url: &str) -> CpProcess {
    CpProcess::start(database_url, "127.0.0.1:0".parse().unwrap(), &[]).await
}

fn endpoint_item(name: &str, port: u32) -> pb::ApplyItem {
    pb::ApplyItem {
        resource: Some(pb::Resource {
            kind: Some(pb::resource::Kind::Endpoint(pb::Endpoint {
                name: name.into(),
                service: "web".into(),
                address: "127.0.0.1".into(),
                port,
                ..Default::default()
            })),
            ..Default::default()
        }),
        expected_revision: None,
    }
}

const BATCH: usize = 5;

/// Writers apply batches of five endpoints while the server is killed with
/// SIGKILL. After a restart every acknowledged batch is whole, no batch is
/// partial, and revisions continue gap-free.
async fn kill_9_keeps_acknowledged_batches_whole(db: TestDb) {
    let cp = start(db.url()).await;
    let mut client = cp.client().await;
    client
        .apply(pb::ApplyRequest {
            items: vec![pb::ApplyItem {
                resource: Some(pb::Resource {
                    kind: Some(pb::resource::Kind::Service(pb::Service {
                        name: "web".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }),
                expected_revision: None,
            }],
            dry_run: false,
        })
        .await
        .unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let stop = stop.clone();
            let addr = cp.addr;
            tokio::spawn(async move {
                let mut client = OperatorServiceClient::connect(format!("http://{addr}"))
                    .await
                    .unwrap();
                let mut acked = vec![];
                for b in 0..10_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let items = (0..BATCH)
                        .map(|i| endpoint_item(&format!("w{w}-b{b}-{i}"), 1000 + b as u32))
                        .collect();
                    match client
                        .apply(pb::ApplyRequest {
                            items,
                            dry_run: false,
                        })
                        .await
                    {
                        Ok(resp) => acked.push((format!("w{w}-b{b}"), resp.into_inner().revision)),
                        Err(_) => break, // The server is gone.
                    }
                }
                acked
            })
        })
        .collect();

    // Let a good number of batches land, then kill mid-stream.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let probe = db.store().await;
    while probe.revision().await.unwrap() < 40 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    probe.close().await;
    cp.kill().await;
    stop.store(true, Ordering::Relaxed);
    let acked: Vec<(String, u64)> = futures::future::join_all(writers)
        .await
        .into_iter()
        .flat_map(Result::unwrap)
        .collect();
    assert!(
        acked.len() >= 20,
        "only {} batches were acknowledged before the kill",
        acked.len()
    );

    // Restart on the same database and look at what survived.
    let cp = start(db.url()).await;
    let mut client = cp.client().await;
    let list = client
        .list(pb::ListRequest {
            kind: pb::Kind::Endpoint as i32,
            page_size: 1000,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let mut per_batch: BTreeMap<String, usize> = BTreeMap::new();
    let mut token = list.next_page_token.clone();
    let mut resources = list.resources;
    while !token.is_empty() {
        let page = client
            .list(pb::ListRequest {
                kind: pb::Kind::Endpoint as i32,
                page_size: 1000,
                page_token: token,
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        resources.extend(page.resources);
        token = page.next_page_token;
    }
    for r in &resources {
        let name = switchyard::resource::pb_ref(r).unwrap().name;
        let batch = name.rsplit_once('-').unwrap().0.to_string();
        *per_batch.entry(batch).or_default() += 1;
    }
    for (batch, count) in &per_batch {
        assert_eq!(*count, BATCH, "batch {batch} is partial");
    }
    for (batch, _) in &acked {
        assert!(
            per_batch.contains_key(batch),
            "acknowledged batch {batch} was lost"
        );
    }
    // Revisions continue: the next write takes exactly one more than the
    // newest surviving revision, and the change log has no gap.
    let store = db.store().await;
    let before = store.revision().await.unwrap();
    assert_eq!(
        before as usize,
        1 + per_batch.len(),
        "one revision per surviving batch"
    );
    let max_acked = acked.iter().map(|a| a.1).max().unwrap();
    eprintln!(
        "kill -9: {} batches acknowledged, {} on disk after restart, revision {before}",
        acked.len(),
        per_batch.len()
    );
    assert!(before >= max_acked);
    let mut revisions: Vec<u64> = vec![];
    loop {
        let log = store
            .changes(revisions.last().copied().unwrap_or(0), 1024)
            .await
            .unwrap();
        if log.is_empty() {
            break;
        }
        revisions.extend(log.iter().map(|c| c.revision));
        revisions.dedup();
    }
    assert_eq!(revisions, (1..=before).collect::<Vec<_>>());
    store.close().await;
    let next = client
        .apply(pb::ApplyRequest {
            items: vec![endpoint_item("after-restart", 1)],
            dry_run: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(next.revision, before + 1);
}

/// SIGTERM while a Watch stream is open and a call is in flight: the server
/// ends the stream and exits 0.
async fn sigterm_exits_cleanly(db: TestDb) {
    let mut cp = start(db.url()).await;
    let mut client = cp.client().await;
    let mut watch = client
        .watch(pb::WatchRequest::default())
        .await
        .unwrap()
        .into_inner();
    let pid = cp.child.id().unwrap().to_string();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), cp.child.wait())
        .await
        .expect("exit in time")
        .unwrap();
    assert!(exit.success(), "exit status {exit:?}");
    let end = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .unwrap();
    assert!(!matches!(end, Ok(Some(_))), "{end:?}");
}

/// The gRPC port is bound with a listen queue of 4096 (or the kernel's
/// `net.core.somaxconn` when lower), not tokio's 1024: a fleet of agents
/// reconnecting at once after a restart must not overflow it (each dropped
/// handshake waits out a SYN retransmission). Read as `ss` shows it (the
/// Send-Q of a listening socket).
#[tokio::test]
async fn the_grpc_port_has_a_deep_listen_queue() {
    let db = TestDb::sqlite();
    let cp = start(db.url()).await;
    let somaxconn: u32 = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let out = std::process::Command::new("ss")
        .args(["-ltnH", &format!("sport = :{}", cp.addr.port())])
        .output()
        .expect("ss (iproute2) is needed to read a listening socket's backlog");
    let text = String::from_utf8_lossy(&out.stdout);
    let backlog: u32 = text
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(2))
        .unwrap_or_else(|| panic!("no listener on {}: {text:?}", cp.addr))
        .parse()
        .unwrap();
    assert_eq!(backlog, somaxconn.min(4096));
}

#[tokio::test]
async fn bad_database_url_is_named() {
    let out = Command::new(env!("CARGO_BIN_EXE_switchyard-cp"))
        .args(["--listen", "127.0.0.1:0", "--database-url", "mysql://x"])
        .output()
        .await
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("database_url"), "{stderr}");
}

mod postgres {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_keeps_acknowledged_batches_whole() {
        super::kill_9_keeps_acknowledged_batches_whole(super::TestDb::postgres().await).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_exits_cleanly() {
        super::sigterm_exits_cleanly(super::TestDb::postgres().await).await
    }
}

mod sqlite {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn kill_9_keeps_acknowledged_batches_whole() {
        super::kill_9_keeps_acknowledged_batches_whole(super::TestDb::sqlite()).await
    }
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sigterm_exits_cleanly() {
        super::sigterm_exits_cleanly(super::TestDb::sqlite()).await
    }
}
