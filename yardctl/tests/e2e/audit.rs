//! The audit trail as an operator sees it: with authentication on, writes
//! by two tokens show their names in `yardctl watch`, in `get -o yaml` and
//! in the BY column, and still do after the control plane restarts on the
//! same database.

use std::process::Stdio;
use std::time::SystemTime;

use switchyard_control_plane::both_backends;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{
    PATIENCE, auth_config, check_author, check_local, check_time, command, interrupt,
    start_with_auth, write, yardctl_as,
};

both_backends!(two_tokens_writes_show_their_authors_across_a_restart);

/// A watch line, `REV upsert KIND/NAME by PRINCIPAL from ADDRESS at TIME`,
/// checked against `principal`, a client on 127.0.0.1 and a time since
/// `since`; returns its revision and resource.
#[track_caller]
fn check_line(line: &str, principal: &str, since: SystemTime) -> (u64, String) {
    let words: Vec<&str> = line.split_whitespace().collect();
    let [
        revision,
        "upsert",
        resource,
        "by",
        by,
        "from",
        address,
        "at",
        at,
    ] = words[..]
    else {
        panic!("not a watch line with its author: {line:?}");
    };
    assert_eq!(by, principal, "{line}");
    check_local(address);
    check_time(at, since);
    (revision.parse().expect("a revision"), resource.to_owned())
}

/// The BY cell (the last) of the row of `name` in a `get` table.
fn by<'a>(table: &'a str, name: &str) -> &'a str {
    let row = table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .unwrap_or_else(|| panic!("{name} not listed:\n{table}"));
    row.split_whitespace().last().unwrap()
}

/// alice applies a service and bob an endpoint of it while an admin
/// watches: the watch names each of them, the service's `lastChange` is
/// alice's and the endpoint's BY is bob; a new control plane on the same
/// database shows the same authors, address and time included.
async fn two_tokens_writes_show_their_authors_across_a_restart(db: TestDb) {
    let tmp = TempDir::new();
    let (server, admin) = start_with_auth(&db, tmp.path()).await;
    let mut secrets = Vec::new();
    for name in ["alice", "bob"] {
        let created = yardctl_as(
            &server,
            &admin,
            &["token", "create", name, "--role", "admin"],
        )
        .await;
        secrets.push(created.ok().trim().to_owned());
    }
    let [alice, bob] = &secrets[..] else {
        unreachable!()
    };

    let mut watch = command(&server.url(), &["--token", &admin, "watch"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The notice comes once the stream is open: nothing after it is missed.
    let mut notice = BufReader::new(watch.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(PATIENCE, notice.next_line())
        .await
        .expect("watch started in time")
        .unwrap()
        .expect("a notice");
    assert_eq!(
        started,
        "watching changes after revision 0 (Ctrl-C to stop)"
    );

    let since = SystemTime::now();
    let service = write(
        tmp.path(),
        "web.yaml",
        "kind: Service\nname: web\nspec: {protocol: http}\n",
    );
    let endpoint = write(
        tmp.path(),
        "web-1.yaml",
        "kind: Endpoint\nname: web-1\nspec: {service: web, address: 10.0.0.1, port: 8080}\n",
    );
    yardctl_as(&server, alice, &["apply", "-f", &service])
        .await
        .ok();
    yardctl_as(&server, bob, &["apply", "-f", &endpoint])
        .await
        .ok();

    let mut lines = BufReader::new(watch.stdout.take().unwrap()).lines();
    let mut watched = Vec::new();
    for _ in 0..2 {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a watch line in time")
            .unwrap()
            .expect("watch still running");
        watched.push(line);
    }
    assert_eq!(
        check_line(&watched[0], "token/alice", since),
        (1, "service/web".into())
    );
    assert_eq!(
        check_line(&watched[1], "token/bob", since),
        (2, "endpoint/web-1".into())
    );
    interrupt(&mut watch).await;

    let svc = yardctl_as(&server, &admin, &["get", "svc", "web", "-o", "yaml"]).await;
    let doc: serde_json::Value = serde_yaml_ng::from_str(svc.ok()).unwrap();
    let (address, _) = check_author(&doc["lastChange"], "token/alice", since);
    assert!(
        watched[0].contains(&format!(" from {address} ")),
        "the watch and get name the same client: {watched:?} {doc}"
    );
    let ep = yardctl_as(&server, &admin, &["get", "ep", "web-1", "-o", "yaml"]).await;
    let doc: serde_json::Value = serde_yaml_ng::from_str(ep.ok()).unwrap();
    check_author(&doc["lastChange"], "token/bob", since);
    let table = yardctl_as(&server, &admin, &["get", "ep"]).await;
    assert_eq!(by(table.ok(), "web-1"), "token/bob");
    let table = yardctl_as(&server, &admin, &["get", "svc"]).await;
    assert_eq!(by(table.ok(), "web"), "token/alice");

    // A new control plane over the same database: the tokens and the
    // authors are the store's, not the old server's memory.
    server.stop().await;
    let server = TestServer::start_with(db.url(), auth_config(tmp.path())).await;
    let again = yardctl_as(&server, &admin, &["get", "svc", "web", "-o", "yaml"]).await;
    assert_eq!(
        again.ok(),
        svc.stdout,
        "the same lastChange after a restart"
    );
    let again = yardctl_as(&server, &admin, &["get", "ep", "web-1", "-o", "yaml"]).await;
    assert_eq!(again.ok(), ep.stdout, "the same lastChange after a restart");
    let table = yardctl_as(&server, bob, &["get", "ep"]).await;
    assert_eq!(by(table.ok(), "web-1"), "token/bob");

    // The history read back from the change log names them too.
    let mut history = command(
        &server.url(),
        &["--token", &admin, "watch", "--from-revision", "0"],
    )
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(history.stdout.take().unwrap()).lines();
    for expected in &watched {
        let line = tokio::time::timeout(PATIENCE, lines.next_line())
            .await
            .expect("a history line in time")
            .unwrap()
            .expect("watch still running");
        assert_eq!(&line, expected, "history after a restart");
    }
    interrupt(&mut history).await;
    server.stop().await;
}
