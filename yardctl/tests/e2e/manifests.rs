//! `apply` and `delete`: examples, round trips, refusals, dry runs.

use switchyard_control_plane::both_backends;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};

use crate::support::{documents, example, examples, revision, write, yardctl, yardctl_stdin};

both_backends!(
    examples_apply_and_apply_again_unchanged,
    printed_manifests_apply_back_unchanged,
    a_refused_batch_names_the_resource_file_and_field_and_writes_nothing,
    a_manifest_that_does_not_parse_sends_nothing,
    dry_run_reports_and_writes_nothing,
    delete_by_name_and_by_file,
    huge_invalid_values_and_missing_references_are_all_printed_short,
    a_batch_over_the_size_limit_is_split_or_refused_with_atomic,
    more_than_one_request_holds_is_applied_in_ordered_batches,
);

/// Every file in examples/ is valid and they apply together; applying them
/// again changes nothing.
async fn examples_apply_and_apply_again_unchanged(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let dir = examples().display().to_string();
    let total: usize = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| documents(&p.display().to_string()))
        .sum();
    assert!(total >= 20, "examples hold {total} resources");

    let first = yardctl(&server, &["apply", "-f", &dir]).await;
    let lines = first.lines();
    assert_eq!(lines.len(), total, "{first:?}");
    assert!(lines.iter().all(|l| l.ends_with(" created")), "{first:?}");
    assert!(lines.contains(&"service/web created"));
    assert!(lines.contains(&"endpoint/shop-v2-a created"));
    let applied = revision(&server).await;
    assert_eq!(applied, 1, "one batch, one revision");

    let again = yardctl(&server, &["apply", "-f", &dir]).await;
    assert!(
        again.lines().iter().all(|l| l.ends_with(" unchanged")),
        "{again:?}"
    );
    assert_eq!(revision(&server).await, applied, "nothing rewritten");

    // A change to one field of one resource configures exactly that one.
    let tmp = TempDir::new();
    let text = std::fs::read_to_string(example("basic.yaml"))
        .unwrap()
        .replace("address: 10.0.0.2", "address: 10.0.0.22");
    let changed = write(tmp.path(), "basic.yaml", &text);
    let run = yardctl(&server, &["apply", "-f", &changed]).await;
    assert_eq!(
        run.lines(),
        [
            "service/web unchanged",
            "endpoint/web-1 unchanged",
            "endpoint/web-2 configured",
            "route/web unchanged",
            "listener/web unchanged",
        ]
    );
}

/// What `get -o yaml` and `get -o json` print applies back as unchanged.
async fn printed_manifests_apply_back_unchanged(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    yardctl(&server, &["apply", "-f", &examples().display().to_string()])
        .await
        .ok();
    let before = revision(&server).await;
    for format in ["yaml", "json"] {
        let printed = yardctl(&server, &["get", "all", "-o", format]).await;
        let back = yardctl_stdin(&server, &["apply", "-f", "-"], printed.ok()).await;
        let lines = back.lines();
        assert!(lines.len() >= 20, "{back:?}");
        assert!(
            lines.iter().all(|l| l.ends_with(" unchanged")),
            "{format}: {back:?}"
        );
    }
    // One resource, and one kind, round-trip alike.
    let one = yardctl(&server, &["get", "route", "shop", "-o", "yaml"]).await;
    let back = yardctl_stdin(&server, &["apply", "-f", "-"], one.ok()).await;
    assert_eq!(back.ok(), "route/shop unchanged\n");
    let eps = yardctl(&server, &["get", "ep", "-o", "json"]).await;
    let back = yardctl_stdin(&server, &["apply", "-f", "-"], eps.ok()).await;
    assert!(
        back.lines()
            .iter()
            .all(|l| l.starts_with("endpoint/") && l.ends_with(" unchanged"))
    );

    // With the audit block a control plane with an audit trail prints, the
    // manifests still apply back unchanged.
    let printed = yardctl(&server, &["get", "all", "-o", "json"]).await;
    let mut docs: serde_json::Value = serde_json::from_str(printed.ok()).unwrap();
    for doc in docs.as_array_mut().unwrap() {
        doc["lastChange"] = serde_json::json!({
            "principal": "token/alice",
            "address": "10.0.0.5:51234",
            "at": "2026-12-04T18:09:56Z",
        });
    }
    let audited = serde_json::to_string(&docs).unwrap();
    let back = yardctl_stdin(&server, &["apply", "-f", "-"], &audited).await;
    assert!(back.lines().len() >= 20, "{back:?}");
    assert!(
        back.lines().iter().all(|l| l.ends_with(" unchanged")),
        "{back:?}"
    );
    assert_eq!(revision(&server).await, before);
}

/// The server refuses an invalid endpoint: one line names the resource, the
/// file and document it came from, and the field; the valid service in the
/// same batch is not written either.
async fn a_refused_batch_names_the_resource_file_and_field_and_writes_nothing(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    let bad = write(
        tmp.path(),
        "bad.yaml",
        "kind: Service\nname: web\n---\nkind: Endpoint\nname: web-3\n\
         spec: {service: web, address: 10.0.0.3}\n",
    );
    let run = yardctl(&server, &["apply", "-f", &bad]).await;
    let line = run.failed(2);
    assert_eq!(
        line,
        format!("error: endpoint/web-3 ({bad}, document 2): spec.port: must be in 1..65535, not 0")
    );
    assert_eq!(revision(&server).await, 0, "nothing applied");
    let get = yardctl(&server, &["get", "svc", "web"]).await;
    assert_eq!(get.failed(2), "error: service/web not found");

    // A reference to a missing service is refused the same way.
    let dangling = write(
        tmp.path(),
        "dangling.yaml",
        "kind: Endpoint\nname: web-1\nspec: {service: nope, address: 10.0.0.1, port: 80}\n",
    );
    let line = yardctl(&server, &["apply", "-f", &dangling]).await;
    let line = line.failed(2);
    assert!(
        line.starts_with(&format!(
            "error: endpoint/web-1 ({dangling}, document 1): spec.service: "
        )),
        "{line}"
    );
    assert!(line.contains("nope"), "{line}");
    assert_eq!(revision(&server).await, 0);
}

/// A misspelt field in the second document of the second file: exit 1,
/// the file, document and field named, nothing sent (the first file is
/// valid and not applied).
async fn a_manifest_that_does_not_parse_sends_nothing(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    let bad = write(
        tmp.path(),
        "typo.yaml",
        "kind: Service\nname: api\n---\nkind: Endpoint\nname: api-1\n\
         spec: {service: api, address: 10.0.0.9, prot: 80}\n",
    );
    let basic = example("basic.yaml");
    let run = yardctl(&server, &["apply", "-f", &basic, "-f", &bad]).await;
    assert_eq!(
        run.failed(1),
        format!(
            "error: endpoint/api-1 ({bad}, document 2): spec.prot: unknown field `prot`; did you mean `port`?"
        )
    );
    let wrong_kind = yardctl_stdin(&server, &["apply", "-f", "-"], "kind: Pod\nname: x\n").await;
    assert_eq!(
        wrong_kind.failed(1),
        "error: stdin, document 1: kind: unknown kind `Pod`; expected one of Service, Endpoint, Route, Listener"
    );
    let bad_yaml = yardctl_stdin(
        &server,
        &["apply", "-f", "-"],
        "kind: Service\nname: [oops\n",
    )
    .await;
    assert!(bad_yaml.failed(1).starts_with("error: stdin, document 1: "));
    assert_eq!(revision(&server).await, 0, "nothing applied");
}

/// `--dry-run` says what would happen and writes nothing, for apply and
/// delete.
async fn dry_run_reports_and_writes_nothing(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let basic = example("basic.yaml");
    let run = yardctl(&server, &["apply", "--dry-run", "-f", &basic]).await;
    assert_eq!(run.lines()[0], "service/web created (dry run)");
    assert_eq!(revision(&server).await, 0);
    let get = yardctl(&server, &["get", "svc"]).await;
    assert_eq!(get.ok(), "");
    assert_eq!(get.stderr, "No services found.\n");

    yardctl(&server, &["apply", "-f", &basic]).await.ok();
    let applied = revision(&server).await;
    let run = yardctl(&server, &["apply", "--dry-run", "-o", "json", "-f", &basic]).await;
    let summary: serde_json::Value = serde_json::from_str(run.ok()).unwrap();
    assert_eq!(summary["dryRun"], true);
    assert_eq!(summary["revision"], applied);
    assert_eq!(summary["results"][0]["kind"], "Service");
    assert_eq!(summary["results"][0]["action"], "unchanged");
    let run = yardctl(&server, &["delete", "--dry-run", "-f", &basic]).await;
    assert_eq!(run.lines()[0], "service/web deleted (dry run)");
    assert_eq!(revision(&server).await, applied);
    yardctl(&server, &["get", "svc", "web"]).await.ok();
}

/// Delete by name, by kind/name and by file; refused whole while something
/// still names a resource, or when one does not exist.
async fn delete_by_name_and_by_file(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let basic = example("basic.yaml");
    yardctl(&server, &["apply", "-f", &basic]).await.ok();
    let applied = revision(&server).await;

    let run = yardctl(&server, &["delete", "svc", "web"]).await;
    assert_eq!(
        run.failed(2),
        "error: service/web is still referenced by endpoint/web-1, endpoint/web-2, route/web"
    );
    let run = yardctl(&server, &["delete", "ep", "web-1", "web-9"]).await;
    assert_eq!(run.failed(2), "error: endpoint/web-9 not found");
    assert_eq!(revision(&server).await, applied, "refused whole");

    let run = yardctl(&server, &["delete", "endpoint/web-1"]).await;
    assert_eq!(run.ok(), "endpoint/web-1 deleted\n");
    yardctl(&server, &["get", "ep", "web-1"]).await.failed(2);

    yardctl(&server, &["apply", "-f", &basic]).await.ok();
    let run = yardctl(&server, &["delete", "-f", &basic]).await;
    assert_eq!(run.lines().len(), 5, "{run:?}");
    let all = yardctl(&server, &["get", "all"]).await;
    assert_eq!(all.ok(), "");
    assert_eq!(all.stderr, "No resources found.\n");
}

/// Each example applies alone to an empty store: none leans on another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_is_self_contained() {
    let mut files: Vec<_> = std::fs::read_dir(examples())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(files.len() >= 5, "{files:?}");
    for file in files {
        let db = TestDb::sqlite();
        let server = TestServer::start(db.url()).await;
        let path = file.display().to_string();
        let run = yardctl(&server, &["apply", "-f", &path]).await;
        assert_eq!(run.code, 0, "{path}: {run:?}");
        assert_eq!(run.lines().len(), documents(&path), "{path}: {run:?}");
        assert!(run.lines().iter().all(|l| l.ends_with(" created")));
        server.stop().await;
    }
}

/// A 100 KB label key, a 1 MB address, and an endpoint with a bad port that
/// names a missing service: one short line tells every problem, each at its
/// resource, file and field.
async fn huge_invalid_values_and_missing_references_are_all_printed_short(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    let key = "k".repeat(100_000);
    let address = "a".repeat(1 << 20);
    let text = format!(
        // An explicit key (`? key`): YAML's plain keys stop at 1024
        // characters.
        "kind: Service\nname: web\nlabels:\n  ? {key}\n  : x\n---\n\
         kind: Endpoint\nname: big\nspec: {{service: web, address: {address}, port: 80}}\n---\n\
         kind: Endpoint\nname: lost\nspec: {{service: nope, address: 10.0.0.1, port: 0}}\n"
    );
    let file = write(tmp.path(), "huge.yaml", &text);
    let run = yardctl(&server, &["apply", "-f", &file]).await;
    let line = run.failed(2);
    let k64 = "k".repeat(64);
    assert_eq!(
        line,
        format!(
            "error: service/web ({file}, document 1): labels[\"{k64}…\"]: label key must be at \
             most 128 characters long, not 100000; \
             endpoint/big ({file}, document 2): spec.address: must be an IP address or a host \
             name of at most 253 characters, not 1048576 characters; \
             endpoint/lost ({file}, document 3): spec.port: must be in 1..65535, not 0; \
             spec.service: service \"nope\" does not exist (nor is it in this request)"
        )
    );
    assert_eq!(revision(&server).await, 0, "nothing applied");
}

/// Manifests over the control plane's request size limit: `--atomic`
/// refuses them naming the limit and writes nothing; without it they are
/// cut to the limit the control plane names and applied in batches.
async fn a_batch_over_the_size_limit_is_split_or_refused_with_atomic(db: TestDb) {
    let config = switchyard_control_plane::server::Config {
        max_request_bytes: 64 << 10,
        ..TestServer::config()
    };
    let server = TestServer::start_with(db.url(), config).await;
    let tmp = TempDir::new();
    let text: String = (0..1000)
        .map(|i| {
            format!(
                "kind: Service\nname: svc-{i:04}\nlabels: {{note: {}}}\n---\n",
                "x".repeat(60)
            )
        })
        .collect();
    let file = write(tmp.path(), "many.yaml", &text);
    let run = yardctl(&server, &["apply", "--atomic", "-f", &file]).await;
    let line = run.failed(2);
    assert!(line.starts_with("error: the request message is "), "{line}");
    assert!(
        line.ends_with(
            "bytes, over the control plane's limit of 65536 bytes (64 KiB): send fewer items \
             per request, or raise --max-request-size"
        ),
        "{line}"
    );
    assert_eq!(revision(&server).await, 0);

    let run = yardctl(&server, &["apply", "-f", &file]).await;
    let lines = run.lines();
    assert_eq!(lines.len(), 1000, "{}", run.stderr);
    assert!(lines.iter().all(|l| l.ends_with(" created")));
    let batches: Vec<&str> = run.stderr.lines().collect();
    assert!(batches.len() >= 2, "{}", run.stderr);
    assert!(
        batches[0].starts_with(&format!("batch 1 of {}: ", batches.len())),
        "{}",
        run.stderr
    );
    assert_eq!(
        revision(&server).await,
        batches.len() as u64,
        "one revision a batch"
    );
}

/// More resources than one Apply may hold: applied in ordered batches
/// (services before the endpoints that name them, even when the file lists
/// them after), one revision each; `--atomic` and `--dry-run` refuse them
/// naming the limit.
async fn more_than_one_request_holds_is_applied_in_ordered_batches(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    let mut text = String::new();
    for i in 0..1200 {
        text.push_str(&format!(
            "kind: Endpoint\nname: ep-{i:04}\nspec: {{service: svc-{:03}, address: 10.1.{}.{}, port: 8080}}\n---\n",
            i / 10,
            i / 250,
            i % 250 + 1
        ));
    }
    for s in 0..120 {
        text.push_str(&format!("kind: Service\nname: svc-{s:03}\n---\n"));
    }
    let file = write(tmp.path(), "big.yaml", &text);

    for flag in ["--atomic", "--dry-run"] {
        let run = yardctl(&server, &["apply", flag, "-f", &file]).await;
        let line = run.failed(1);
        assert!(
            line.contains("1320 resources do not fit one request (at most 1000 per Apply)"),
            "{line}"
        );
    }
    assert_eq!(revision(&server).await, 0);

    let run = yardctl(&server, &["apply", "-f", &file]).await;
    let lines = run.lines();
    assert_eq!(lines.len(), 1320, "{}", run.stderr);
    assert_eq!(lines[0], "endpoint/ep-0000 created", "manifest order");
    assert_eq!(lines[1319], "service/svc-119 created");
    assert_eq!(
        run.stderr,
        "batch 1 of 2: 1000 resources applied, revision 1\n\
         batch 2 of 2: 320 resources applied, revision 2\n"
    );
    assert_eq!(revision(&server).await, 2);
    let again = yardctl(&server, &["apply", "-f", &file, "-o", "name"]).await;
    assert_eq!(again.lines().len(), 1320, "{}", again.stderr);
    assert_eq!(revision(&server).await, 2, "unchanged: nothing written");
}
