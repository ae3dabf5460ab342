//! `yardctl` against a control plane that serves mutual TLS: with the
//! right CA and a client certificate it works; without them it fails,
//! naming the flag or the connection.

use switchyard::tls::ServerFiles;
use switchyard::tls::testing::Ca;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};

use crate::support::{example, yardctl_at};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_and_get_over_mutual_tls() {
    let db = TestDb::sqlite();
    let dir = TempDir::new();
    let ca = Ca::new("test CA");
    let (cert, key) = ca.server("control plane").write(dir.path(), "server");
    let ca_cert = ca.write(dir.path(), "ca");
    let config = switchyard_control_plane::server::Config {
        tls: Some(ServerFiles {
            cert,
            key,
            client_ca: Some(ca_cert.clone()),
        }),
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    let url = format!("https://127.0.0.1:{}", server.addr.port());
    let (client_cert, client_key) = ca.client(None).write(dir.path(), "operator");
    let ca_cert = ca_cert.display().to_string();
    let client_cert = client_cert.display().to_string();
    let client_key = client_key.display().to_string();
    let tls = [
        "--ca-cert",
        ca_cert.as_str(),
        "--client-cert",
        &client_cert,
        "--client-key",
        &client_key,
    ];
    let with_tls = |args: &[&'static str]| {
        let mut all = tls.to_vec();
        all.extend_from_slice(args);
        all
    };

    let basic = example("basic.yaml");
    let mut apply = with_tls(&["apply", "-f"]);
    apply.push(&basic);
    yardctl_at(&url, &apply).await.ok();
    let services = yardctl_at(&url, &with_tls(&["get", "services"])).await;
    assert!(
        services.lines().iter().any(|l| l.starts_with("web ")),
        "{services:?}"
    );
    // Without a scheme, TLS flags mean https://.
    let bare = format!("127.0.0.1:{}", server.addr.port());
    yardctl_at(&bare, &with_tls(&["get", "services"]))
        .await
        .ok();

    // No client certificate: the control plane refuses the handshake. With
    // TLS 1.3 the client may learn it only at its first call.
    let run = yardctl_at(&url, &["--ca-cert", &ca_cert, "get", "services"]).await;
    run.failed(3);
    // A control plane whose certificate another CA issued is not trusted.
    let other = Ca::new("another CA").write(dir.path(), "other");
    let other = other.display().to_string();
    let run = yardctl_at(
        &url,
        &[
            "--ca-cert",
            &other,
            "--client-cert",
            &client_cert,
            "--client-key",
            &client_key,
            "get",
            "services",
        ],
    )
    .await;
    assert!(
        run.failed(3)
            .starts_with(&format!("error: cannot connect to {url}")),
        "{run:?}"
    );
    // A certificate without its key is a usage error naming the flag.
    let run = yardctl_at(
        &url,
        &[
            "--ca-cert",
            &ca_cert,
            "--client-cert",
            &client_cert,
            "get",
            "services",
        ],
    )
    .await;
    assert_eq!(
        run.failed(1),
        "error: --client-key: the certificate is set but not the private key: \
         a client identity needs both"
    );
    // Plaintext to the TLS port gets nowhere.
    let plain = format!("http://127.0.0.1:{}", server.addr.port());
    let run = yardctl_at(&plain, &["get", "services"]).await;
    assert_eq!(run.code, 3, "{run:?}");
    server.stop().await;
}
