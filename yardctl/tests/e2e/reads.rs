//! `get` in every format, selectors and paging, `watch`, and what happens
//! when no control plane answers.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use switchyard::pb::operator_service_server::OperatorServiceServer;
use switchyard_control_plane::fanout::Head;
use switchyard_control_plane::grpc::Operator;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;

use switchyard_control_plane::both_backends;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::support::{
    PATIENCE, bare, check_author, command, example, examples, interrupt, revision, run, write,
    yardctl, yardctl_at,
};

both_backends!(
    get_prints_tables_yaml_and_json,
    selectors_filter_and_every_page_is_read,
    watch_prints_each_change_until_interrupted,
);

async fn apply_examples(server: &TestServer) {
    yardctl(server, &["apply", "-f", &examples().display().to_string()])
        .await
        .ok();
}

/// Tables have the columns an operator looks for; YAML and JSON are
/// manifests with who made the last change; kinds go by singular, plural
/// and short names.
async fn get_prints_tables_yaml_and_json(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let before = SystemTime::now();
    apply_examples(&server).await;

    let eps = yardctl(&server, &["get", "endpoints"]).await;
    let lines = eps.lines();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "SERVICE", "ADDRESS", "PORT", "WEIGHT", "NODE", "HEALTH", "REVISION", "BY"
        ]
    );
    // With authentication off, every write is `anonymous`: the BY column,
    // last, says so.
    let cells =
        |line: &str| -> Vec<String> { line.split_whitespace().map(str::to_string).collect() };
    let web1 = cells(
        lines
            .iter()
            .find(|l| l.starts_with("web-1 "))
            .expect("web-1 listed"),
    );
    assert_eq!(
        web1,
        [
            "web-1",
            "web",
            "10.0.0.1",
            "8080",
            "1",
            "-",
            "unknown",
            "1",
            "anonymous"
        ]
    );
    // Columns line up: every row's second column starts where the header's does.
    let at = lines[0].find("SERVICE").unwrap();
    assert!(
        lines[1..]
            .iter()
            .all(|l| l[at - 1..].starts_with(' ') && !l[at..].starts_with(' '))
    );
    for alias in ["ep", "endpoint", "Endpoints"] {
        assert_eq!(yardctl(&server, &["get", alias]).await.ok(), eps.stdout);
    }

    let svc = yardctl(&server, &["get", "svc", "sessions"]).await;
    let row = cells(svc.lines()[1]);
    assert_eq!(
        row,
        [
            "sessions",
            "http",
            "maglev",
            "header",
            "x-user-id",
            "-",
            "1",
            "anonymous"
        ]
    );
    let listeners = yardctl(&server, &["get", "listeners"]).await;
    assert!(
        listeners.lines().iter().any(|l| cells(l)
            == [
                "postgres",
                "127.0.0.1",
                "15432",
                "tcp",
                "service/postgres",
                "role=app",
                "1",
                "anonymous"
            ]),
        "{listeners:?}"
    );
    let routes = yardctl(&server, &["get", "routes", "shop"]).await;
    assert!(
        routes.ok().contains("shop[version=v1],shop[version=v2]"),
        "{routes:?}"
    );

    // The last change: anonymous, from the address `yardctl apply` had,
    // at the time of the apply; the rest of the manifest exactly.
    let yaml = yardctl(&server, &["get", "svc/web", "-o", "yaml"]).await;
    let doc: serde_json::Value = serde_yaml_ng::from_str(yaml.ok()).unwrap();
    let (address, at) = check_author(&doc["lastChange"], "anonymous", before);
    assert_eq!(
        yaml.stdout,
        format!(
            "kind: Service\nname: web\nlabels:\n  team: shop\nrevision: 1\nlastChange:\n  \
             principal: anonymous\n  address: {address}\n  at: {at}\nspec:\n  \
             protocol: http\n  lbPolicy: round_robin\n  healthCheck:\n    interval: 5s\n    \
             timeout: 1s\n    http:\n      path: /healthz\n  connectTimeout: 1s\n"
        )
    );
    let json = yardctl(&server, &["get", "ep", "web-2", "-o", "json"]).await;
    let doc: serde_json::Value = serde_json::from_str(json.ok()).unwrap();
    assert_eq!(
        check_author(&doc["lastChange"], "anonymous", before),
        (address.clone(), at.clone()),
        "one apply, one author"
    );
    assert_eq!(
        json.stdout,
        format!(
            r#"{{
  "kind": "Endpoint",
  "name": "web-2",
  "labels": {{
    "team": "shop"
  }},
  "revision": 1,
  "lastChange": {{
    "principal": "anonymous",
    "address": "{address}",
    "at": "{at}"
  }},
  "spec": {{
    "service": "web",
    "address": "10.0.0.2",
    "port": 8080
  }},
  "status": {{
    "health": "unknown"
  }}
}}
"#
        )
    );
    let list = yardctl(&server, &["get", "svc", "-o", "json"]).await;
    assert!(list.ok().starts_with("[\n"), "a list is a JSON array");
    let names = yardctl(&server, &["get", "svc,route", "-o", "name"]).await;
    assert!(names.lines().contains(&"service/postgres"));
    assert!(names.lines().contains(&"route/shop"));

    let missing = yardctl(&server, &["get", "svc", "nope"]).await;
    assert_eq!(missing.failed(2), "error: service/nope not found");
    let bad_kind = yardctl(&server, &["get", "pods"]).await;
    assert_eq!(
        bad_kind.failed(1),
        "error: unknown kind `pods`; expected service (svc), endpoint (ep), route or listener"
    );
}

/// `-l` selects by labels; lists longer than a page are read whole.
async fn selectors_filter_and_every_page_is_read(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let canary = example("canary.yaml");
    yardctl(&server, &["apply", "-f", &canary]).await.ok();
    let v2 = yardctl(&server, &["get", "ep", "-l", "version=v2", "-o", "name"]).await;
    assert_eq!(v2.ok(), "endpoint/shop-v2-a\n");
    let not_v2 = yardctl(
        &server,
        &["get", "ep", "--selector", "version!=v2", "-o", "name"],
    )
    .await;
    assert_eq!(not_v2.ok(), "endpoint/shop-v1-a\nendpoint/shop-v1-b\n");
    let bad = yardctl(&server, &["get", "ep", "-l", "=v2"]).await;
    assert!(
        bad.failed(1).starts_with("error: --selector =v2: "),
        "{bad:?}"
    );

    // 700 endpoints: more than one page of the client's 500.
    let tmp = TempDir::new();
    let mut text = String::new();
    for i in 0..700 {
        text.push_str(&format!(
            "---\nkind: Endpoint\nname: bulk-{i:04}\nlabels: {{bulk: \"yes\"}}\n\
             spec: {{service: shop, address: 10.1.{}.{}, port: 80}}\n",
            i / 250,
            i % 250 + 1
        ));
    }
    let bulk = write(tmp.path(), "bulk.yaml", &text);
    assert_eq!(
        yardctl(&server, &["apply", "-f", &bulk])
            .await
            .lines()
            .len(),
        700
    );
    let all = yardctl(&server, &["get", "ep", "-l", "bulk", "-o", "name"]).await;
    let names = all.lines();
    assert_eq!(names.len(), 700);
    assert_eq!(names[0], "endpoint/bulk-0000");
    assert_eq!(names[699], "endpoint/bulk-0699");
}

/// Watch prints one line per change, from a given revision or from now,
/// and Ctrl-C ends it with exit 0.
async fn watch_prints_each_change_until_interrupted(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let basic = example("basic.yaml");
    yardctl(&server, &["apply", "-f", &basic]).await.ok();

    // From revision 0: the history, then nothing more until something changes.
    let mut history = command(
        &server.url(),
        &["watch", "--from-revision", "0", "svc", "ep"],
    )
    .spawn()
    .unwrap();
    let mut lines = BufReader::new(history.stdout.take().unwrap()).lines();
    let mut next = async || {
        let line = tokio::time::timeout(PATIENCE, lines.next_line()).await;
        line.expect("a line in time")
            .unwrap()
            .expect("watch still running")
    };
    // Revision, op and resource; who made the change follows when the
    // control plane tells.
    let head = |line: String| -> Vec<String> {
        line.split_whitespace()
            .take(3)
            .map(str::to_string)
            .collect()
    };
    let seen: Vec<Vec<String>> = vec![head(next().await), head(next().await), head(next().await)];
    assert_eq!(
        seen,
        [
            ["1", "upsert", "service/web"],
            ["1", "upsert", "endpoint/web-1"],
            ["1", "upsert", "endpoint/web-2"],
        ],
        "routes and listeners filtered out"
    );
    yardctl(&server, &["delete", "endpoint/web-2"]).await.ok();
    assert_eq!(head(next().await), ["2", "delete", "endpoint/web-2"]);
    interrupt(&mut history).await;

    // From now: what it says on stderr is where it starts; older changes are
    // not replayed.
    let mut live = command(&server.url(), &["watch", "-o", "json"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut notice = BufReader::new(live.stderr.take().unwrap()).lines();
    let started = tokio::time::timeout(PATIENCE, notice.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(
        started,
        "watching changes after revision 2 (Ctrl-C to stop)"
    );
    let tmp = TempDir::new();
    let api = write(tmp.path(), "api.yaml", "kind: Service\nname: api\n");
    yardctl(&server, &["apply", "-f", &api]).await.ok();
    let mut lines = BufReader::new(live.stdout.take().unwrap()).lines();
    let line = tokio::time::timeout(PATIENCE, lines.next_line())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let change: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(change["revision"], 3);
    assert_eq!(change["op"], "upsert");
    assert_eq!(change["resource"]["kind"], "Service");
    assert_eq!(change["resource"]["name"], "api");
    assert_eq!(revision(&server).await, 3);
    interrupt(&mut live).await;
}

/// Nothing listening: exit 3 and one line, for every command, whether the
/// address comes from --server or YARD_SERVER; a manifest is still checked
/// first (exit 1).
#[tokio::test]
async fn an_unreachable_control_plane_is_exit_3_and_one_line() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let url = format!("http://{closed}");
    let basic = example("basic.yaml");
    for args in [
        vec!["get", "svc"],
        vec!["apply", "-f", &basic],
        vec!["nodes"],
        vec!["rollout", "status"],
        vec!["watch"],
    ] {
        let run = yardctl_at(&url, &args).await;
        assert_eq!(
            run.failed(3),
            format!("error: cannot connect to {url}: Connection refused (os error 111)"),
            "{args:?}"
        );
    }
    let mut from_env = bare(&["get", "svc"]);
    from_env.env("YARD_SERVER", closed.to_string());
    assert_eq!(
        run(from_env).await.failed(3),
        format!("error: cannot connect to {url}: Connection refused (os error 111)"),
        "YARD_SERVER is read, and http:// assumed"
    );

    let tmp = TempDir::new();
    let bad = write(tmp.path(), "bad.yaml", "kind: Service\n");
    let run = yardctl_at(&url, &["apply", "-f", &bad]).await;
    assert_eq!(
        run.failed(1),
        format!("error: {bad}, document 1: name: required")
    );
}

/// TLS flags that do not fit the address, and other usage errors, are
/// exit 1 naming the flag.
#[tokio::test]
async fn tls_flags_and_usage_errors_are_exit_1() {
    let url = "http://127.0.0.1:7700";
    let run = yardctl_at(url, &["--ca-cert", "ca.pem", "get", "svc"]).await;
    assert_eq!(
        run.failed(1),
        "error: --ca-cert: http://127.0.0.1:7700 is plaintext http://, \
         but a CA certificate is set: use an https:// address"
    );
    let run = yardctl_at("https://cp:7700", &["get", "svc"]).await;
    assert_eq!(
        run.failed(1),
        "error: --ca-cert: https://cp:7700: an https:// address needs a CA certificate \
         to check the server with"
    );
    let run = yardctl_at(
        "https://cp:7700",
        &["--ca-cert", "/nonexistent/ca.pem", "get", "svc"],
    )
    .await;
    assert!(
        run.failed(1)
            .starts_with("error: --ca-cert: CA certificate /nonexistent/ca.pem: cannot read it"),
        "{run:?}"
    );
    let run = yardctl_at(url, &["apply"]).await;
    assert_eq!(run.code, 1, "{run:?}");
    let help = yardctl_at(url, &["--help"]).await;
    assert!(help.ok().contains("Exit codes:"));
    assert!(help.stdout.contains("4  rollout status timed out"));
}

/// `--token` and `YARD_TOKEN` reach the control plane as a bearer header;
/// without one, no header is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_sent_as_a_bearer_header() {
    let db = TestDb::sqlite();
    let seen = Arc::new(Mutex::new(Vec::<String>::new()));
    let record = seen.clone();
    let operator = Operator::new(
        Arc::new(db.store().await),
        Head::new(0),
        CancellationToken::new(),
    );
    let service =
        OperatorServiceServer::with_interceptor(operator, move |req: tonic::Request<()>| {
            let header = req.metadata().get("authorization");
            let value = header.map_or("<none>".into(), |v| v.to_str().unwrap().to_string());
            record.lock().unwrap().push(value);
            Ok(req)
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming_shutdown(
                TcpListenerStream::new(listener),
                shutdown.clone().cancelled_owned(),
            ),
    );

    yardctl_at(&url, &["--token", "s3cret", "get", "svc"])
        .await
        .ok();
    let mut from_env = command(&url, &["get", "svc"]);
    from_env.env("YARD_TOKEN", "from-env");
    run(from_env).await.ok();
    yardctl_at(&url, &["get", "svc"]).await.ok();
    assert_eq!(
        *seen.lock().unwrap(),
        ["Bearer s3cret", "Bearer from-env", "<none>"]
    );
    shutdown.cancel();
    server.await.unwrap().unwrap();
}
