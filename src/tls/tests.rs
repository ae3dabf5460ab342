use std::sync::Mutex;
use std::sync::atomic::Ordering;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt as _;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

use super::testing::{Ca, Pair, served_certificate};
use super::*;

/// Longest any wait here may take.
const PATIENCE: Duration = Duration::from_secs(10);

/// A CA, a server pair and files for them, in a directory of their own.
struct Pki {
    dir: tempfile::TempDir,
    ca: Ca,
    server: ServerFiles,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new("test CA");
        let (cert, key) = ca.server("first").write(dir.path(), "server");
        let client_ca = ca.write(dir.path(), "ca");
        Pki {
            dir,
            ca,
            server: ServerFiles {
                cert,
                key,
                client_ca: Some(client_ca),
            },
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Client files trusting this CA, presenting `pair` (written as `name`).
    fn client(&self, name: &str, pair: Option<&Pair>) -> ClientFiles {
        let (cert, key) = match pair {
            Some(pair) => {
                let (c, k) = pair.write(self.path(), name);
                (Some(c), Some(k))
            }
            None => (None, None),
        };
        ClientFiles {
            ca_cert: self.server.client_ca.clone(),
            cert,
            key,
        }
    }
}

/// A tonic server (gRPC health) served through [`incoming`], recording the
/// peer of every request and counting the connections it was given.
struct Served {
    addr: SocketAddr,
    peers: Arc<Mutex<Vec<Peer>>>,
    conns: Arc<AtomicUsize>,
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), tonic::transport::Error>>,
}

impl Served {
    async fn start(tls: Option<ServerTls>, handshake_timeout: Duration) -> Served {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (_, health) = tonic_health::server::health_reporter();
        let peers = Arc::new(Mutex::new(Vec::new()));
        let conns = Arc::new(AtomicUsize::new(0));
        let shutdown = CancellationToken::new();
        let seen = peers.clone();
        let counted = conns.clone();
        let stream = incoming(listener, tls, handshake_timeout).map(move |conn| {
            counted.fetch_add(1, Ordering::SeqCst);
            conn
        });
        let record = move |request: tonic::Request<()>| {
            let peer = request.extensions().get::<Peer>().cloned();
            seen.lock().unwrap().extend(peer);
            Ok(request)
        };
        let task = tokio::spawn(
            tonic::transport::Server::builder()
                .layer(tonic::service::InterceptorLayer::new(record))
                .add_service(health)
                .serve_with_incoming_shutdown(stream, shutdown.clone().cancelled_owned()),
        );
        Served {
            addr,
            peers,
            conns,
            shutdown,
            task,
        }
    }

    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.addr.port())
    }

    fn last_peer(&self) -> Option<Peer> {
        self.peers.lock().unwrap().last().cloned()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.task.await.unwrap().unwrap();
    }
}

/// One health check through a new connection to `url` made with `files`.
async fn check(url: &str, files: &ClientFiles) -> Result<(), String> {
    let endpoint = files
        .endpoint(url)
        .map_err(|e| e.to_string())?
        .connect_timeout(PATIENCE);
    let call = async {
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .map(drop)
            .map_err(|s| format!("{s:?}"))
    };
    tokio::time::timeout(PATIENCE, call)
        .await
        .map_err(|_| "timed out".to_string())?
}

#[tokio::test]
async fn a_client_certificate_from_the_ca_gets_through_and_names_its_node() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server.clone()).unwrap();
    let server = Served::start(Some(tls), PATIENCE).await;

    let client = pki.client("node-1", Some(&pki.ca.client(Some("node-1"))));
    check(&server.https(), &client).await.unwrap();
    let peer = server
        .last_peer()
        .expect("the server saw the request's peer");
    assert_eq!(peer.node.as_deref(), Some("node-1"));
    assert_eq!(peer.addr.map(|a| a.ip()), Some(server.addr.ip()));

    // A certificate from the CA without a node URI gets through too, as no node.
    let anonymous = pki.client("anonymous", Some(&pki.ca.client(None)));
    check(&server.https(), &anonymous).await.unwrap();
    assert_eq!(server.last_peer().unwrap().node, None);
    server.stop().await;
}

#[tokio::test]
async fn wrong_ca_expired_missing_and_plaintext_clients_are_refused() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server.clone()).unwrap();
    let server = Served::start(Some(tls), PATIENCE).await;
    let url = server.https();

    let other = Ca::new("another CA");
    let wrong_ca = pki.client("wrong-ca", Some(&other.client(Some("node-1"))));
    let expired = pki.client("expired", Some(&pki.ca.expired_client(Some("node-1"))));
    let none = pki.client("none", None);
    for (what, files) in [
        ("a certificate from another CA", &wrong_ca),
        ("an expired certificate", &expired),
        ("no client certificate", &none),
    ] {
        let result = check(&url, files).await;
        assert!(result.is_err(), "{what} was let through");
    }
    let plain = format!("http://127.0.0.1:{}", server.addr.port());
    assert!(check(&plain, &ClientFiles::default()).await.is_err());
    assert!(
        server.peers.lock().unwrap().is_empty(),
        "no call got through"
    );

    // The server still serves everyone else.
    let good = pki.client("good", Some(&pki.ca.client(Some("node-2"))));
    check(&url, &good).await.unwrap();
    assert_eq!(server.last_peer().unwrap().node.as_deref(), Some("node-2"));
    server.stop().await;
}

#[tokio::test]
async fn without_a_client_ca_the_port_is_tls_only() {
    let pki = Pki::new();
    let files = ServerFiles {
        client_ca: None,
        ..pki.server.clone()
    };
    let server = Served::start(Some(ServerTls::load(files).unwrap()), PATIENCE).await;
    check(&server.https(), &pki.client("none", None))
        .await
        .unwrap();
    assert_eq!(server.last_peer().unwrap().node, None);
    let plain = format!("http://127.0.0.1:{}", server.addr.port());
    assert!(check(&plain, &ClientFiles::default()).await.is_err());
    server.stop().await;
}

#[tokio::test]
async fn plaintext_serving_keeps_working_and_counts_streams_per_connection() {
    let server = Served::start(None, PATIENCE).await;
    let url = format!("http://127.0.0.1:{}", server.addr.port());
    let channel = ClientFiles::default()
        .endpoint(&url)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    client.check(HealthCheckRequest::default()).await.unwrap();
    client.check(HealthCheckRequest::default()).await.unwrap();
    let peers = server.peers.lock().unwrap().clone();
    assert_eq!(peers.len(), 2);
    assert_eq!(peers[0].node, None);
    assert!(
        Arc::ptr_eq(&peers[0].streams, &peers[1].streams),
        "requests on one connection share its stream counter"
    );
    check(&url, &ClientFiles::default()).await.unwrap();
    let last = server.last_peer().unwrap();
    assert!(
        !Arc::ptr_eq(&peers[0].streams, &last.streams),
        "another connection has its own counter"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_peer_that_never_finishes_the_handshake_is_dropped_after_the_timeout() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server.clone()).unwrap();
    let timeout = Duration::from_millis(300);
    let server = Served::start(Some(tls), timeout).await;

    let started = tokio::time::Instant::now();
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(PATIENCE, silent.read(&mut buf))
        .await
        .expect("the server closed the silent connection");
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "closed without a word: {read:?}"
    );
    assert!(started.elapsed() >= timeout, "not before the timeout");

    // Others are served meanwhile and after.
    let client = pki.client("node-1", Some(&pki.ca.client(Some("node-1"))));
    check(&server.https(), &client).await.unwrap();
    assert_eq!(server.conns.load(Ordering::SeqCst), 1, "only the good one");
    server.stop().await;
}

#[tokio::test]
async fn a_plaintext_peer_that_sends_no_preface_is_dropped_after_the_timeout() {
    let timeout = Duration::from_millis(300);
    let server = Served::start(None, timeout).await;
    let started = tokio::time::Instant::now();
    // One says nothing; another starts the preface and stops.
    let mut silent = TcpStream::connect(server.addr).await.unwrap();
    let mut halfway = TcpStream::connect(server.addr).await.unwrap();
    halfway.write_all(b"PRI * HTTP/2.0\r\n").await.unwrap();
    for conn in [&mut silent, &mut halfway] {
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(PATIENCE, conn.read(&mut buf))
            .await
            .expect("the server closed the stalled connection");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "closed without a word: {read:?}"
        );
    }
    assert!(started.elapsed() >= timeout, "not before the timeout");
    assert!(started.elapsed() < timeout * 3, "{:?}", started.elapsed());

    // Others are served meanwhile and after.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    HealthClient::new(channel)
        .check(HealthCheckRequest::default())
        .await
        .unwrap();
    assert_eq!(server.conns.load(Ordering::SeqCst), 1, "only the good one");
    server.stop().await;
}

#[tokio::test]
async fn a_replaced_certificate_is_served_to_new_connections_while_open_ones_go_on() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server.clone()).unwrap();
    let server = Served::start(Some(tls.clone()), PATIENCE).await;
    let shutdown = CancellationToken::new();
    let watch = tokio::spawn({
        let (tls, shutdown) = (tls.clone(), shutdown.clone());
        async move { tls.watch(shutdown).await }
    });
    let client_pair = pki.ca.client(Some("node-1"));
    let client = pki.client("node-1", Some(&client_pair));
    let first = pki.ca.server("first");
    assert_ne!(
        served_certificate(server.addr, &pki.ca, Some(&client_pair))
            .await
            .unwrap(),
        first.cert_der,
        "a fresh pair differs from the one on disk"
    );

    // An open connection, used before and after the rotation.
    let channel = client
        .endpoint(&server.https())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut open = HealthClient::new(channel);
    open.check(HealthCheckRequest::default()).await.unwrap();
    let open_addr = server.last_peer().unwrap().addr;

    let second = pki.ca.server("second");
    second.replace(&pki.server.cert, &pki.server.key);
    let started = tokio::time::Instant::now();
    loop {
        let served = served_certificate(server.addr, &pki.ca, Some(&client_pair))
            .await
            .unwrap();
        if served == second.cert_der {
            break;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the new certificate was never served"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The open connection carries on: the call comes from the same port.
    open.check(HealthCheckRequest::default()).await.unwrap();
    assert_eq!(server.last_peer().unwrap().addr, open_addr);
    shutdown.cancel();
    watch.await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_failed_reload_keeps_the_previous_certificate() {
    let pki = Pki::new();
    let tls = ServerTls::load(pki.server.clone()).unwrap();
    let before = tls.config();
    // A certificate replaced without its key: the pair does not match.
    let second = pki.ca.server("second");
    testing::replace(&pki.server.cert, &second.cert_pem);
    let error = tls.reload().unwrap_err();
    assert!(matches!(error, Error::KeyMismatch { .. }), "{error}");
    assert!(Arc::ptr_eq(&before, &tls.config()), "the old one stays");
    let server = Served::start(Some(tls.clone()), PATIENCE).await;
    let client = pki.client("node-1", Some(&pki.ca.client(Some("node-1"))));
    check(&server.https(), &client).await.unwrap();

    // Once the key follows, the pair loads.
    testing::replace(&pki.server.key, &second.key_pem);
    tls.reload().unwrap();
    let served = served_certificate(server.addr, &pki.ca, None).await;
    // Without a client certificate the handshake fails on our side only
    // after the server's certificate has been seen, or not at all: ask with one.
    drop(served);
    let pair = pki.ca.client(Some("node-1"));
    let served = served_certificate(server.addr, &pki.ca, Some(&pair))
        .await
        .unwrap();
    assert_eq!(served, second.cert_der);
    server.stop().await;
}

#[test]
fn bad_server_files_are_named() {
    let pki = Pki::new();
    let missing = pki.path().join("missing.pem");
    let text = testing::write(pki.path(), "text.pem", "just some text\n");
    let only_cert = pki.server.cert.clone();
    let other_key = pki.ca.server("other").write(pki.path(), "other").1;
    let broken = testing::write(
        pki.path(),
        "broken.pem",
        "-----BEGIN CERTIFICATE-----\nMIIB\n",
    );
    let cases = [
        (
            ServerFiles {
                cert: missing.clone(),
                ..pki.server.clone()
            },
            File::Cert,
            "cannot read it",
        ),
        (
            ServerFiles {
                cert: text.clone(),
                ..pki.server.clone()
            },
            File::Cert,
            "no PEM certificate in it",
        ),
        (
            ServerFiles {
                key: only_cert.clone(),
                ..pki.server.clone()
            },
            File::Key,
            "no PEM private key in it",
        ),
        (
            ServerFiles {
                key: other_key,
                ..pki.server.clone()
            },
            File::Key,
            "does not match certificate",
        ),
        (
            ServerFiles {
                client_ca: Some(text.clone()),
                ..pki.server.clone()
            },
            File::ClientCa,
            "no PEM certificate in it",
        ),
        (
            ServerFiles {
                cert: broken,
                ..pki.server.clone()
            },
            File::Cert,
            "a PEM section has no END line",
        ),
    ];
    for (files, file, words) in cases {
        let error = ServerTls::load(files.clone()).unwrap_err();
        assert_eq!(error.file(), Some(file), "{error}");
        let message = error.to_string();
        assert!(message.contains(words), "{message}");
        let named = [&files.cert, &files.key]
            .into_iter()
            .chain(&files.client_ca)
            .any(|p| message.contains(&p.display().to_string()));
        assert!(named, "the path is named: {message}");
    }
}

#[test]
fn bad_client_files_are_named() {
    let pki = Pki::new();
    let pair = pki.ca.client(Some("node-1"));
    let (cert, key) = pair.write(pki.path(), "client");
    let ca = pki.server.client_ca.clone();
    let url = "https://127.0.0.1:7700";

    let error = ClientFiles::default().endpoint(url).unwrap_err();
    assert_eq!(error.file(), Some(File::CaCert), "{error}");
    assert!(error.to_string().contains("needs a CA certificate"));

    let with_ca = ClientFiles {
        ca_cert: ca.clone(),
        ..ClientFiles::default()
    };
    let error = with_ca.endpoint("http://127.0.0.1:7700").unwrap_err();
    assert_eq!(error.file(), Some(File::CaCert), "{error}");
    assert!(error.to_string().contains("use an https:// address"));

    let cert_only = ClientFiles {
        cert: Some(cert.clone()),
        ..with_ca.clone()
    };
    assert_eq!(cert_only.endpoint(url).unwrap_err().file(), Some(File::Key));
    let key_only = ClientFiles {
        key: Some(key.clone()),
        ..with_ca.clone()
    };
    assert_eq!(key_only.endpoint(url).unwrap_err().file(), Some(File::Cert));

    let other_key = pki.ca.client(None).write(pki.path(), "other").1;
    let mismatch = ClientFiles {
        ca_cert: ca.clone(),
        cert: Some(cert.clone()),
        key: Some(other_key),
    };
    let error = mismatch.endpoint(url).unwrap_err();
    assert!(matches!(error, Error::KeyMismatch { .. }), "{error}");

    let swapped = ClientFiles {
        ca_cert: ca.clone(),
        cert: Some(key.clone()),
        key: Some(cert.clone()),
    };
    assert_eq!(swapped.endpoint(url).unwrap_err().file(), Some(File::Cert));

    let error = ClientFiles::default()
        .endpoint("ftp://127.0.0.1:7700")
        .unwrap_err();
    assert_eq!(error.file(), None, "{error}");

    let good = ClientFiles {
        ca_cert: ca,
        cert: Some(cert),
        key: Some(key),
    };
    good.endpoint(url).unwrap();
    ClientFiles::default()
        .endpoint("http://127.0.0.1:7700")
        .unwrap();
}

#[test]
fn the_node_is_the_first_node_uri_of_the_certificate() {
    let ca = Ca::new("test CA");
    let node = |uris: &[&str]| node_of(&ca.client_with_uris(uris).cert_der);
    assert_eq!(node(&[]), None);
    assert_eq!(
        node(&["spiffe://example.org/node/web-1"]).as_deref(),
        Some("web-1")
    );
    assert_eq!(
        node(&[
            "https://example.org/node/x",
            "spiffe://example.org/workload/y",
            "spiffe://example.org/node/second",
            "spiffe://example.org/node/third",
        ])
        .as_deref(),
        Some("second")
    );
    for not_a_node in [
        "spiffe://example.org/node/Upper",
        "spiffe://example.org/node/",
        "spiffe://example.org/node/a/b",
        "spiffe:///node/a",
        "spiffe://Example.org/node/a",
        "spiffe://example.org/nodes/a",
    ] {
        assert_eq!(node(&[not_a_node]), None, "{not_a_node}");
    }
    assert_eq!(node_of(&CertificateDer::from(vec![1, 2, 3])), None);
}
