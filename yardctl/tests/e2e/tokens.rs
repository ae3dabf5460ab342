//! `token create|list|revoke` against a control plane with authentication
//! on: the secret alone on stdout, the note on stderr; a reader token reads
//! but may not write, a revoked token and no token are refused, each as one
//! line and exit 2 saying which refusal it is.

use std::fs::File;
use std::process::Stdio;
use std::sync::Arc;

use switchyard::pb::operator_service_server::OperatorServiceServer;
use switchyard_control_plane::both_backends;
use switchyard_control_plane::fanout::Head;
use switchyard_control_plane::grpc::Operator;
use switchyard_control_plane::testing::{TempDir, TestDb};
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use crate::support::{Run, command, example, run, start_with_auth, yardctl, yardctl_as};

both_backends!(
    a_reader_token_reads_and_is_refused_writes_until_revoked,
    token_commands_check_their_input_and_name_the_refusal,
);

/// Checks that `secret` has the shape of a new secret of token `name`
/// (`syt.<43 characters>.<name>`).
#[track_caller]
fn check_secret(secret: &str, name: &str) {
    let random = secret
        .strip_prefix("syt.")
        .and_then(|rest| rest.strip_suffix(&format!(".{name}")))
        .unwrap_or_else(|| panic!("not a secret of token/{name}: {secret:?}"));
    assert_eq!(random.len(), 43, "{secret:?}");
}

/// `token list` as rows of cells.
fn rows(list: &Run) -> Vec<Vec<&str>> {
    list.ok()
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect()
}

/// The bootstrap admin makes a reader token `ci`: its secret alone on
/// stdout (so `> file` holds exactly it); with it `apply` is refused naming
/// the role it needs and nothing is written, `get` works; once revoked it
/// is not authenticated, and neither is a call without a token.
async fn a_reader_token_reads_and_is_refused_writes_until_revoked(db: TestDb) {
    let tmp = TempDir::new();
    let (server, admin) = start_with_auth(&db, tmp.path()).await;
    let basic = example("basic.yaml");

    let file = tmp.path().join("ci.token");
    let mut to_file = command(
        &server.url(),
        &[
            "--token", &admin, "token", "create", "ci", "--role", "reader",
        ],
    );
    to_file.stdout(Stdio::from(File::create(&file).unwrap()));
    let created = run(to_file).await;
    assert_eq!(created.code, 0, "{created:?}");
    assert_eq!(
        created.stderr,
        "token/ci created with the reader role; keep its secret now: it is not shown again\n"
    );
    let text = std::fs::read_to_string(&file).unwrap();
    let ci = text.strip_suffix('\n').expect("one line");
    check_secret(ci, "ci");

    let refused = yardctl_as(&server, ci, &["apply", "-f", &basic]).await;
    assert_eq!(
        refused.failed(2),
        "error: permission denied: Apply needs the admin role; token/ci has the reader role"
    );
    let nothing = yardctl_as(&server, ci, &["get", "svc", "-o", "name"]).await;
    assert_eq!(nothing.ok(), "", "nothing written");

    yardctl_as(&server, &admin, &["apply", "-f", &basic])
        .await
        .ok();
    let services = yardctl_as(&server, ci, &["get", "svc", "-o", "name"]).await;
    assert_eq!(services.ok(), "service/web\n");

    let list = yardctl_as(&server, &admin, &["token", "list"]).await;
    let rows = rows(&list);
    assert_eq!(
        rows[0],
        ["NAME", "ROLE", "NODE", "CREATED", "BY", "REVOKED"]
    );
    assert_eq!(rows.len(), 3, "{list:?}");
    assert_eq!(rows[1][..3], ["bootstrap-admin", "admin", "-"]);
    assert_eq!(rows[1][4..], ["bootstrap", "-"]);
    assert_eq!(rows[2][..3], ["ci", "reader", "-"]);
    assert_eq!(rows[2][4..], ["token/bootstrap-admin", "-"]);

    let revoked = yardctl_as(&server, &admin, &["token", "revoke", "ci"]).await;
    assert_eq!(revoked.ok(), "token/ci revoked\n");
    let after = yardctl_as(&server, ci, &["get", "svc"]).await;
    assert_eq!(
        after.failed(2),
        "error: not authenticated: unknown or revoked token (authorization: Bearer) \
         (give a valid token with --token or YARD_TOKEN)"
    );
    let json = yardctl_as(&server, &admin, &["token", "list", "-o", "json"]).await;
    let tokens: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(tokens[1]["name"], "ci");
    assert_eq!(tokens[1]["role"], "reader");
    assert!(tokens[1]["revokedAt"].is_string(), "{tokens}");
    assert!(tokens[0].get("revokedAt").is_none(), "{tokens}");
    assert!(
        !json.stdout.contains("syt."),
        "secrets are never listed: {json:?}"
    );

    let anonymous = yardctl(&server, &["get", "svc"]).await;
    assert_eq!(
        anonymous.failed(2),
        "error: not authenticated: this call needs a credential: a bearer token \
         (authorization: Bearer), or an agent's client certificate \
         (give a valid token with --token or YARD_TOKEN)"
    );
    server.stop().await;
}

/// Agent tokens name their node; flags that cannot work are refused before
/// anything is sent; the control plane's refusals (a name taken, a token
/// not there, a caller without the admin role or without a token) are one
/// line and exit 2.
async fn token_commands_check_their_input_and_name_the_refusal(db: TestDb) {
    let tmp = TempDir::new();
    let (server, admin) = start_with_auth(&db, tmp.path()).await;

    let edge = yardctl_as(
        &server,
        &admin,
        &[
            "token", "create", "edge-1", "--role", "agent", "--node", "edge-1",
        ],
    )
    .await;
    check_secret(edge.ok().strip_suffix('\n').unwrap(), "edge-1");
    let reader = yardctl_as(
        &server,
        &admin,
        &["token", "create", "ci", "--role", "reader"],
    )
    .await;
    let reader = reader.ok().trim().to_owned();

    let agent = yardctl_as(
        &server,
        &admin,
        &["token", "create", "edge-2", "--role", "agent"],
    )
    .await;
    assert_eq!(
        agent.failed(1),
        "error: --node: required with --role agent (the node the token speaks for)"
    );
    let named = yardctl_as(
        &server,
        &admin,
        &["token", "create", "x", "--role", "admin", "-o", "name"],
    )
    .await;
    assert!(named.failed(1).contains("-o name is not supported"));

    let missing = yardctl_as(&server, &admin, &["token", "revoke", "nope"]).await;
    assert_eq!(missing.failed(2), r#"error: token "nope" not found"#);
    let twice = yardctl_as(
        &server,
        &admin,
        &["token", "create", "ci", "--role", "reader"],
    )
    .await;
    assert_eq!(twice.failed(2), r#"error: token "ci" already exists"#);
    assert!(twice.stdout.is_empty(), "no secret, no note: {twice:?}");

    let not_admin = yardctl_as(
        &server,
        &reader,
        &["token", "create", "x", "--role", "admin"],
    )
    .await;
    assert_eq!(
        not_admin.failed(2),
        "error: permission denied: CreateToken needs the admin role; token/ci has the reader role"
    );
    assert!(not_admin.stdout.is_empty());
    let anonymous = yardctl(&server, &["token", "list"]).await;
    assert!(
        anonymous
            .failed(2)
            .starts_with("error: not authenticated: this call needs a credential"),
        "{anonymous:?}"
    );

    let list = yardctl_as(&server, &admin, &["token", "list"]).await;
    let names: Vec<(&str, &str, &str)> = rows(&list)[1..]
        .iter()
        .map(|r| (r[0], r[1], r[2]))
        .collect();
    assert_eq!(
        names,
        [
            ("bootstrap-admin", "admin", "-"),
            ("ci", "reader", "-"),
            ("edge-1", "agent", "edge-1"),
        ],
        "what was refused made no token"
    );
    server.stop().await;
}

/// A control plane from before token management (OperatorService only) is
/// named as such, not met with an empty error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_without_token_service_says_so() {
    let db = TestDb::sqlite();
    let operator = Operator::new(
        Arc::new(db.store().await),
        Head::new(0),
        CancellationToken::new(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let served = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(OperatorServiceServer::new(operator))
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    for args in [
        vec!["token", "list"],
        vec!["token", "create", "ci", "--role", "reader"],
        vec!["token", "revoke", "ci"],
    ] {
        let run = run(command(&url, &args)).await;
        assert_eq!(
            run.failed(2),
            format!(
                "error: the control plane at {url} does not serve TokenService; it predates token management"
            ),
            "{args:?}"
        );
    }
    shutdown.cancel();
    served.await.unwrap().unwrap();
}
