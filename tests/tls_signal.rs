//! SIGHUP makes the control plane's TLS files be re-read at once, even when
//! nothing about the files shows a change. In a test binary of its own: the
//! signal goes to the whole process, and would reload other tests' watchers.

use std::os::unix::fs::MetadataExt as _;
use std::path::Path;
use std::time::Duration;

use switchyard::tls::testing::{Ca, served_certificate};
use switchyard::tls::{ServerFiles, ServerTls, incoming};
use tokio::signal::unix::{SignalKind, signal};
use tokio_stream::StreamExt as _;
use tokio_util::sync::CancellationToken;

/// What the watcher compares between two looks at a file.
fn stamp(path: &Path) -> (std::time::SystemTime, u64, u64) {
    let meta = std::fs::metadata(path).unwrap();
    (meta.modified().unwrap(), meta.len(), meta.ino())
}

/// `text` padded with newlines (which PEM readers skip) to `len` bytes.
fn padded(text: &str, len: usize) -> String {
    format!("{text}{}", "\n".repeat(len - text.len()))
}

/// Overwrites `path` in place with `text`, then sets its modification time
/// back to `modified`: same inode, same length (the caller pads), same time.
fn overwrite_unnoticed(path: &Path, text: &str, modified: std::time::SystemTime) {
    std::fs::write(path, text).unwrap();
    let file = std::fs::File::options().write(true).open(path).unwrap();
    file.set_modified(modified).unwrap();
}

#[tokio::test]
async fn sighup_reloads_the_certificate_at_once() {
    // This test's own handler first, so that SIGHUP never meets the default
    // action (terminate), whatever the order of events.
    let mut own = signal(SignalKind::hangup()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new("test CA");
    let (first, second) = (ca.server("first"), ca.server("second"));
    let cert_len = first.cert_pem.len().max(second.cert_pem.len()) + 8;
    let key_len = first.key_pem.len().max(second.key_pem.len()) + 8;
    let files = ServerFiles {
        cert: dir.path().join("server.crt"),
        key: dir.path().join("server.key"),
        client_ca: None,
    };
    std::fs::write(&files.cert, padded(&first.cert_pem, cert_len)).unwrap();
    std::fs::write(&files.key, padded(&first.key_pem, key_len)).unwrap();
    let tls = ServerTls::load(files.clone()).unwrap();

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let accept = tokio::spawn({
        let (tls, shutdown) = (tls.clone(), shutdown.clone());
        async move {
            let mut conns = std::pin::pin!(incoming(listener, Some(tls), Duration::from_secs(5)));
            let mut held = Vec::new();
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    Some(conn) = conns.next() => held.push(conn),
                }
            }
        }
    });
    let watch = tokio::spawn({
        let (tls, shutdown) = (tls.clone(), shutdown.clone());
        async move { tls.watch(shutdown).await }
    });
    assert_eq!(
        served_certificate(addr, &ca, None).await.unwrap(),
        first.cert_der
    );

    // The second pair, written so that the files look unchanged.
    let (cert_stamp, key_stamp) = (stamp(&files.cert), stamp(&files.key));
    overwrite_unnoticed(
        &files.cert,
        &padded(&second.cert_pem, cert_len),
        cert_stamp.0,
    );
    overwrite_unnoticed(&files.key, &padded(&second.key_pem, key_len), key_stamp.0);
    assert_eq!(stamp(&files.cert), cert_stamp);
    assert_eq!(stamp(&files.key), key_stamp);

    let started = tokio::time::Instant::now();
    loop {
        // Sent until seen: the watcher may not have installed its handler.
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let _ = tokio::time::timeout(Duration::from_millis(200), own.recv()).await;
        if served_certificate(addr, &ca, None).await.unwrap() == second.cert_der {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "SIGHUP never reloaded the certificate"
        );
    }
    shutdown.cancel();
    watch.await.unwrap();
    accept.await.unwrap();
}
