//! `diff`: what an apply would change, field by field, from a dry run that
//! writes nothing; exit 1 when anything would change, as `kubectl diff`.

use switchyard_control_plane::both_backends;
use switchyard_control_plane::testing::{TempDir, TestDb, TestServer};

use crate::support::{example, revision, write, yardctl};

both_backends!(
    diff_shows_each_changed_field_and_exits_1,
    diff_of_what_is_stored_is_empty_and_exits_0,
    diff_of_an_invalid_or_unreadable_batch_is_an_error_not_a_difference,
);

/// A changed address, an added label and a new resource: each shows, with
/// the stored and declared values, and nothing is written.
async fn diff_shows_each_changed_field_and_exits_1(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let basic = example("basic.yaml");
    yardctl(&server, &["apply", "-f", &basic]).await.ok();
    let before = revision(&server).await;

    let tmp = TempDir::new();
    let text = std::fs::read_to_string(&basic)
        .unwrap()
        .replace("address: 10.0.0.2", "address: 10.0.0.22")
        .replacen(
            "labels: {team: shop}",
            "labels: {team: shop, tier: front}",
            1,
        );
    let changed = write(tmp.path(), "basic.yaml", &text);
    let extra = write(
        tmp.path(),
        "extra.yaml",
        "kind: Endpoint\nname: web-3\nspec: {service: web, address: 10.0.0.3, port: 8080}\n",
    );

    let run = yardctl(&server, &["diff", "-f", &changed, "-f", &extra]).await;
    assert_eq!(run.code, 1, "{run:?}");
    assert_eq!(
        run.lines(),
        [
            format!("service/web configured ({changed}, document 1)"),
            "  + labels.tier: \"front\"".to_string(),
            format!("endpoint/web-2 configured ({changed}, document 3)"),
            "  ~ spec.address: \"10.0.0.2\" -> \"10.0.0.22\"".to_string(),
            format!("endpoint/web-3 created ({extra}, document 1)"),
            "  + kind: \"Endpoint\"".to_string(),
            "  + name: \"web-3\"".to_string(),
            "  + spec.service: \"web\"".to_string(),
            "  + spec.address: \"10.0.0.3\"".to_string(),
            "  + spec.port: 8080".to_string(),
        ],
        "{run:?}"
    );
    assert_eq!(run.stderr, "3 of 6 resources would change\n");
    assert_eq!(revision(&server).await, before, "a diff writes nothing");

    // For scripts: the same differences as a document.
    let json = yardctl(&server, &["diff", "-f", &changed, "-o", "json"]).await;
    assert_eq!(json.code, 1, "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    let differences = doc["differences"].as_array().unwrap();
    assert_eq!(differences.len(), 2, "{doc}");
    assert_eq!(differences[1]["name"], "web-2");
    assert_eq!(differences[1]["action"], "configured");
    assert_eq!(
        differences[1]["changes"][0],
        serde_json::json!({"path": "spec.address", "from": "10.0.0.2", "to": "10.0.0.22"})
    );

    // Applied, the same manifests no longer differ.
    yardctl(&server, &["apply", "-f", &changed, "-f", &extra])
        .await
        .ok();
    let after = yardctl(&server, &["diff", "-f", &changed, "-f", &extra]).await;
    assert_eq!(after.ok(), "");
}

/// Manifests that match what is stored: no output, exit 0; also after
/// printing the stored resources and diffing them back.
async fn diff_of_what_is_stored_is_empty_and_exits_0(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let basic = example("basic.yaml");
    yardctl(&server, &["apply", "-f", &basic]).await.ok();
    let run = yardctl(&server, &["diff", "-f", &basic]).await;
    assert_eq!(run.ok(), "");
    assert_eq!(run.stderr, "0 of 5 resources would change\n");

    let tmp = TempDir::new();
    let printed = yardctl(&server, &["get", "all", "-o", "yaml"]).await;
    let file = write(tmp.path(), "printed.yaml", printed.ok());
    let back = yardctl(&server, &["diff", "-f", &file]).await;
    assert_eq!(back.ok(), "", "status and revisions are not compared");
}

/// A batch the apply would refuse fails the diff with the same problems
/// (exit 2), and so does a manifest that does not parse: exit 1 is kept
/// for "differences".
async fn diff_of_an_invalid_or_unreadable_batch_is_an_error_not_a_difference(db: TestDb) {
    let server = TestServer::start(db.url()).await;
    let tmp = TempDir::new();
    let invalid = write(
        tmp.path(),
        "invalid.yaml",
        "kind: Endpoint\nname: web-9\nspec: {service: nowhere, address: 10.0.0.9, port: 0}\n",
    );
    let run = yardctl(&server, &["diff", "-f", &invalid]).await;
    let line = run.failed(2);
    assert!(line.contains("endpoint/web-9"), "{line}");
    assert!(line.contains("spec.port"), "{line}");
    assert!(line.contains("nowhere"), "the missing service too: {line}");
    assert_eq!(run.stdout, "");

    let broken = write(tmp.path(), "broken.yaml", "kind: Endpoint\nname: [\n");
    let run = yardctl(&server, &["diff", "-f", &broken]).await;
    let line = run.failed(2);
    assert!(line.contains("broken.yaml"), "{line}");
}
