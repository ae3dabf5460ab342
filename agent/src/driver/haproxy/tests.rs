//! The driver against a real HAProxy (installed by `scripts/test`).

use std::time::Duration;

use switchyard::pb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::state::Store;
use crate::testing::{http_call, listener, route, service, snapshot};

#[test]
fn show_proc_is_read() {
    let text = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
13015           master          1 [failed: 0]   0d00h00m02s     2.6.12\n\
# workers\n\
13052           worker          0               0d00h00m01s     2.6.12\n\
# programs\n";
    assert_eq!(
        parse_proc(text),
        Some(Proc {
            master: 13015,
            reloads: 1,
            failed: 0,
            worker: Some(13052)
        })
    );
}

/// A backend answering every request with `name`.
async fn backend(name: &'static str) -> u16 {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut got = Vec::new();
                while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{name}",
                    name.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
            });
        }
    });
    port
}

fn endpoint_at(name: &str, port: u16, weight: u32) -> pb::Resource {
    let mut r = crate::testing::endpoint(name, "web", 1);
    if let Some(pb::resource::Kind::Endpoint(e)) = &mut r.kind {
        e.address = "127.0.0.1".into();
        e.port = u32::from(port);
        e.weight = weight;
    }
    r
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn node(revision: u64, resources: Vec<pb::Resource>) -> Arc<NodeConfig> {
    Store::new()
        .apply_snapshot(snapshot(revision, resources))
        .expect("valid")
}

/// HAProxy from PATH: tests that run it are `#[ignore]`d for a plain
/// `cargo test` and run by scripts/test, which installs it; there its
/// absence is a failure, never a skip.
fn haproxy_bin() -> PathBuf {
    let bin = PathBuf::from("haproxy");
    assert!(
        crate::driver::find_program(&bin).is_some(),
        "haproxy is not installed (scripts/test installs it)"
    );
    bin
}

async fn until_master(driver: &Haproxy) -> Proc {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(p) = proc_status(&driver.inner.config.master()).await
            && p.worker.is_some()
        {
            return p;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HAProxy never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Endpoint changes go through the runtime API (no reload, same worker),
/// a new listener reloads once, and a file HAProxy refuses (two listeners
/// on one port) is a refusal with HAProxy's message while the previous
/// configuration keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs haproxy (scripts/test installs it)"]
async fn endpoint_changes_need_no_reload_and_refusals_carry_haproxys_message() {
    let bin = haproxy_bin();
    let dir = tempfile::tempdir().unwrap();
    let stop = CancellationToken::new();
    let config = Config {
        bin,
        ..Config::new(dir.path())
    };
    let (driver, run) = Haproxy::new(config, stop.clone());
    let run = tokio::spawn(run);
    let start = until_master(&driver).await;

    let a = backend("a").await;
    let b = backend("b").await;
    let port = free_port();
    let base = |revision, endpoints: Vec<pb::Resource>| {
        let mut r = vec![
            service("web", 1),
            route("web", "web", 1),
            listener("front", "127.0.0.1", u32::from(port), "web", 1),
        ];
        r.extend(endpoints);
        node(revision, r)
    };
    driver
        .apply(&base(1, vec![endpoint_at("a", a, 1)]))
        .await
        .unwrap();
    assert_eq!(http_call(port, "GET", "/", "").await, (200, "a".into()));
    let first = proc_status(&driver.inner.config.master()).await.unwrap();
    assert_eq!(first.master, start.master);

    // Add b, then remove a, then re-weight and drain: runtime API only.
    driver
        .apply(&base(
            2,
            vec![endpoint_at("a", a, 1), endpoint_at("b", b, 1)],
        ))
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        seen.insert(http_call(port, "GET", "/", "").await.1);
    }
    assert_eq!(
        seen,
        ["a".to_string(), "b".to_string()].into(),
        "both serve"
    );
    driver
        .apply(&base(3, vec![endpoint_at("b", b, 5)]))
        .await
        .unwrap();
    for _ in 0..5 {
        assert_eq!(http_call(port, "GET", "/", "").await, (200, "b".into()));
    }
    let after = proc_status(&driver.inner.config.master()).await.unwrap();
    assert_eq!(
        after.reloads, first.reloads,
        "no reload for endpoint changes"
    );
    assert_eq!(after.worker, first.worker, "same worker");
    assert!(
        std::fs::read_to_string(dir.path().join("haproxy.cfg"))
            .unwrap()
            .contains(&format!("server b 127.0.0.1:{b} weight 5"))
    );

    // A second listener: structural, one reload, same master.
    let port2 = free_port();
    let mut two = vec![
        service("web", 1),
        route("web", "web", 1),
        listener("front", "127.0.0.1", u32::from(port), "web", 1),
        listener("second", "127.0.0.1", u32::from(port2), "web", 1),
        endpoint_at("b", b, 5),
    ];
    driver.apply(&node(4, two.clone())).await.unwrap();
    let reloaded = proc_status(&driver.inner.config.master()).await.unwrap();
    assert_eq!(reloaded.reloads, after.reloads + 1);
    assert_eq!(reloaded.master, start.master);
    assert_eq!(http_call(port2, "GET", "/", "").await, (200, "b".into()));

    // A listener HAProxy cannot bind (an address this host does not have)
    // passes `haproxy -c` and fails the reload: the master keeps the old
    // worker and its alert is the refusal.
    two.push(listener("bad", "192.0.2.1", u32::from(port), "web", 1));
    let refused = driver.apply(&node(5, two)).await.expect_err("refused");
    let text = refused.to_string();
    assert!(text.contains("HAProxy refused the configuration"), "{text}");
    assert!(text.contains("cannot bind socket"), "{text}");
    assert_eq!(
        http_call(port, "GET", "/", "").await,
        (200, "b".into()),
        "still serving"
    );
    let still = proc_status(&driver.inner.config.master()).await.unwrap();
    assert_eq!(still.worker, reloaded.worker, "the previous worker serves");
    assert!(
        !std::fs::read_to_string(dir.path().join("haproxy.cfg"))
            .unwrap()
            .contains("f.bad")
    );

    stop.cancel();
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        proc_status(&dir.path().join("haproxy-master.sock"))
            .await
            .is_err(),
        "HAProxy stopped with the agent"
    );
}

/// `haproxy -c` refusing a file is a refusal carrying HAProxy's alert, not
/// an empty message.
#[tokio::test]
#[ignore = "needs haproxy (scripts/test installs it)"]
async fn a_file_haproxy_c_refuses_is_refused_with_its_alert() {
    let bin = haproxy_bin();
    let dir = tempfile::tempdir().unwrap();
    let refused = check(&bin, dir.path(), "global\n  no-such-keyword 1\n")
        .await
        .expect_err("refused");
    let text = refused.to_string();
    assert!(text.contains("HAProxy refused the configuration"), "{text}");
    assert!(text.contains("no-such-keyword"), "{text}");
}

/// A relative data directory still gives HAProxy Unix socket paths: it
/// reads a socket address without a leading `/` as a host name.
#[test]
fn sockets_are_absolute_paths_whatever_the_data_directory() {
    let (driver, _run) = Haproxy::new(Config::new("relative/dir"), CancellationToken::new());
    let config = &driver.inner.config;
    assert!(config.master().is_absolute(), "{:?}", config.master());
    let rendered = render::render(&NodeConfig::default(), &config.sockets()).unwrap();
    let socket = rendered
        .text
        .lines()
        .find_map(|l| l.trim().strip_prefix("stats socket "))
        .expect("a stats socket line");
    assert!(socket.starts_with('/'), "{socket}");
}
