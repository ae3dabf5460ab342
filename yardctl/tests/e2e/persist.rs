//! An agent whose data directory is full: the configuration is applied and
//! served, but cannot be saved to disk. `yardctl nodes` and the agent's
//! metrics say so; once space is freed, the agent saves it and both clear.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use switchyard_agent::Agent;
use switchyard_control_plane::both_backends;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer, scrape};
use tokio_util::sync::CancellationToken;

use crate::support::{eventually, write, yardctl};

both_backends!(a_full_disk_shows_in_nodes_and_metrics_and_clears_once_space_is_freed);

/// A small tmpfs mounted on a fresh directory, unmounted when dropped.
struct Tmpfs {
    dir: TempDir,
}

impl Tmpfs {
    /// `None` when this process may not mount (not root).
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = TempDir::new();
        let path = dir.path().display().to_string();
        let mounted = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", &path])
            .status()
            .is_ok_and(|s| s.success());
        mounted.then_some(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system: a file of every byte left.
    fn fill(&self) -> PathBuf {
        use std::io::Write as _;
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        let block = [0u8; 4096];
        while file.write_all(&block).is_ok() {}
        let _ = file.write_all(&block[..1]);
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.path())
            .status();
    }
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.trim_ascii() == b"0")
}

async fn a_full_disk_shows_in_nodes_and_metrics_and_clears_once_space_is_freed(db: TestDb) {
    if !is_root() {
        eprintln!(
            "SKIPPED: mounting a small tmpfs (a disk that fills up) needs root; \
             scripts/test runs as root"
        );
        return;
    }
    let tmpfs = Tmpfs::mount("512k").expect("mount a tmpfs (as root)");
    let server = TestServer::start(db.url()).await;
    let config = switchyard_agent::Config {
        node_id: "node-1".into(),
        labels: BTreeMap::from([("role".to_string(), "db".to_string())]),
        control_planes: vec![server.url()],
        data_dir: tmpfs.path().to_path_buf(),
        backoff_base: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        persist_retry: Duration::from_millis(200),
        ..Default::default()
    };
    let agent = Agent::start(config, CancellationToken::new())
        .await
        .expect("start agent");
    // The agent's metrics port, as `switchyard-agent --metrics-listen` serves it.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let metrics_addr = listener.local_addr().unwrap();
    let sources = switchyard_agent::metrics::Sources::new(&agent, None);
    let stop_metrics = CancellationToken::new();
    let metrics = tokio::spawn(switchyard_agent::metrics::serve(
        listener,
        move || sources.render(),
        agent.readiness(),
        stop_metrics.clone(),
    ));
    let gauge = |text: &str, name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
    };

    let files = TempDir::new();
    let manifest = |port: u16| {
        write(
            files.path(),
            "db.yaml",
            &format!(
                "kind: Service\nname: db\n---\n\
                 kind: Endpoint\nname: db-1\nspec: {{service: db, address: 10.9.0.1, port: {port}, node: node-1}}\n"
            ),
        )
    };
    yardctl(&server, &["apply", "-f", &manifest(5432)])
        .await
        .ok();
    eventually("the first configuration saved", || async {
        (switchyard_agent::persist::load(tmpfs.path())
            .ok()??
            .revision
            > 0)
        .then_some(())
    })
    .await;

    // The disk fills up; the next configuration is applied but not saved.
    let filler = tmpfs.fill();
    let run = yardctl(&server, &["apply", "-f", &manifest(5433)]).await;
    run.ok();
    let revision = switchyard_agent::persist::load(tmpfs.path())
        .unwrap()
        .unwrap()
        .revision;
    let line = eventually("yardctl nodes shows the failed save", || async {
        let run = yardctl(&server, &["nodes"]).await;
        let line = run
            .lines()
            .into_iter()
            .find(|l| l.starts_with("node-1"))?
            .to_owned();
        line.contains("NO").then_some(line)
    })
    .await;
    println!("{line}");
    assert!(line.contains("No space left on device"), "{line}");
    let yaml = yardctl(&server, &["nodes", "-o", "yaml"]).await;
    assert!(
        yaml.ok().contains("persistFailure") || yaml.ok().contains("persist_failure"),
        "{}",
        yaml.ok()
    );
    assert!(
        agent.config().borrow().endpoints["db-1"].port == 5433,
        "the new configuration is served"
    );
    let text = scrape(metrics_addr).await;
    assert_eq!(
        gauge(&text, "switchyard_agent_config_saved"),
        Some(0),
        "{text}"
    );
    assert!(gauge(&text, "switchyard_agent_persist_failures_total").unwrap() >= 1);
    assert_eq!(
        switchyard_agent::persist::load(tmpfs.path())
            .unwrap()
            .unwrap()
            .revision,
        revision,
        "the file on disk is still the older configuration"
    );

    // Space is freed: the agent saves it and everything clears.
    std::fs::remove_file(filler).unwrap();
    let line = eventually("yardctl nodes shows the configuration saved", || async {
        let run = yardctl(&server, &["nodes"]).await;
        let line = run
            .lines()
            .into_iter()
            .find(|l| l.starts_with("node-1"))?
            .to_owned();
        (!line.contains("NO")).then_some(line)
    })
    .await;
    println!("{line}");
    let text = scrape(metrics_addr).await;
    assert_eq!(
        gauge(&text, "switchyard_agent_config_saved"),
        Some(1),
        "{text}"
    );
    let saved = switchyard_agent::persist::load(tmpfs.path())
        .unwrap()
        .unwrap();
    assert!(saved.revision > revision, "saved {}", saved.revision);
    assert_eq!(saved.endpoints[0].port, 5433);

    stop_metrics.cancel();
    metrics.await.unwrap();
    agent.stop().await.unwrap();
    server.stop().await;
}
