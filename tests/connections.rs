//! Stalled connections to the control plane's gRPC port are let go: one
//! that never says anything (no HTTP/2 preface, no TLS handshake) after the
//! handshake timeout, and an HTTP/2 peer that stops answering PINGs after
//! the keep-alive interval and timeout.

use std::time::{Duration, Instant};

use switchyard_control_plane::server::Config;
use switchyard_control_plane::testing::{TestDb, TestServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes);
/// when it closed, and the types of the HTTP/2 frames it sent.
async fn until_closed(conn: &mut TcpStream, limit: Duration) -> (Option<Instant>, Vec<u8>) {
    let mut bytes = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match conn.read(&mut buf).await {
                Ok(0) | Err(_) => return Instant::now(),
                Ok(n) => bytes.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok();
    // Frame headers: 3 bytes of length, then the type.
    let mut types = Vec::new();
    let mut at = 0;
    while at + 9 <= bytes.len() {
        let len = u32::from_be_bytes([0, bytes[at], bytes[at + 1], bytes[at + 2]]) as usize;
        types.push(bytes[at + 3]);
        at += 9 + len;
    }
    (read, types)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_sends_nothing_is_disconnected_after_the_handshake_timeout() {
    let db = TestDb::sqlite();
    let timeout = Duration::from_millis(500);
    let server = TestServer::start_with(
        db.url(),
        Config {
            handshake_timeout: timeout,
            ..TestServer::config()
        },
    )
    .await;
    let started = Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let (closed, frames) = until_closed(&mut silent, Duration::from_secs(10)).await;
    let took = closed.expect("the silent connection was never closed") - started;
    println!("silent connection closed after {took:?} (handshake timeout {timeout:?})");
    assert!(took >= timeout, "closed before the timeout: {took:?}");
    assert!(took < timeout + Duration::from_secs(1), "{took:?}");
    assert!(frames.is_empty(), "the server spoke first: {frames:?}");
    // The port still serves.
    server.client().await;
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_that_stops_answering_pings_is_disconnected_after_the_keepalive_timeout() {
    let db = TestDb::sqlite();
    let (interval, timeout) = (Duration::from_millis(300), Duration::from_millis(300));
    let server = TestServer::start_with(
        db.url(),
        Config {
            keepalive_interval: Some(interval),
            keepalive_timeout: timeout,
            ..TestServer::config()
        },
    )
    .await;
    let started = Instant::now();
    let mut peer = TcpStream::connect(server.addr).await.unwrap();
    // A well-formed start: the preface and an empty SETTINGS frame; then
    // it reads whatever comes and never answers anything.
    peer.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    peer.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let (closed, frames) = until_closed(&mut peer, Duration::from_secs(10)).await;
    let took = closed.expect("the silent peer was never disconnected") - started;
    println!("silent HTTP/2 peer disconnected after {took:?}; frames {frames:?}");
    const PING: u8 = 6;
    assert!(frames.contains(&PING), "no PING before closing: {frames:?}");
    assert!(took >= interval, "closed before any PING was due: {took:?}");
    assert!(
        took < interval + timeout + Duration::from_secs(1),
        "not within the keep-alive interval and timeout: {took:?}"
    );
    server.stop().await;
}
