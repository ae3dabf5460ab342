//! The field-by-field comparison, on documents.

use serde_yaml_ng::Value;

use super::{change_line, compare};

fn yaml(text: &str) -> Value {
    serde_yaml_ng::from_str(text).unwrap()
}

fn lines(stored: Option<&str>, declared: &str) -> Vec<String> {
    let stored = stored.map(yaml);
    compare(stored.as_ref(), &yaml(declared))
        .iter()
        .map(change_line)
        .collect()
}

#[test]
fn identical_documents_have_no_changes() {
    let doc = "kind: Service\nname: web\nspec: {port: 80, rules: [{path: /a}]}\n";
    assert!(lines(Some(doc), doc).is_empty());
}

#[test]
fn changed_added_and_removed_fields_each_get_a_line() {
    let stored = "kind: Route\nname: web\nlabels: {team: a}\nspec: {timeoutMs: 1000, retries: {attempts: 2}}\n";
    let declared = "kind: Route\nname: web\nspec: {timeoutMs: 2000, retries: {attempts: 2, on: [reset]}, service: web}\n";
    assert_eq!(
        lines(Some(stored), declared),
        [
            "~ spec.timeoutMs: 1000 -> 2000",
            "+ spec.retries.on[0]: \"reset\"",
            "+ spec.service: \"web\"",
            "- labels.team: \"a\"",
        ]
    );
}

#[test]
fn a_resource_to_create_shows_every_declared_field() {
    let declared = "kind: Endpoint\nname: web-1\nspec: {address: 127.0.0.1, port: 8080}\n";
    assert_eq!(
        lines(None, declared),
        [
            "+ kind: \"Endpoint\"",
            "+ name: \"web-1\"",
            "+ spec.address: \"127.0.0.1\"",
            "+ spec.port: 8080",
        ]
    );
}

#[test]
fn sequences_compare_by_position_and_keys_that_are_not_words_are_quoted() {
    let stored = "labels: {app.kubernetes.io/name: web}\nspec: {rules: [{path: /a}, {path: /b}]}\n";
    let declared = "labels: {app.kubernetes.io/name: shop}\nspec: {rules: [{path: /a}]}\n";
    assert_eq!(
        lines(Some(stored), declared),
        [
            "~ labels[\"app.kubernetes.io/name\"]: \"web\" -> \"shop\"",
            "- spec.rules[1].path: \"/b\"",
        ]
    );
}

#[test]
fn a_string_and_a_number_with_the_same_text_differ() {
    assert_eq!(
        lines(Some("port: \"80\"\n"), "port: 80\n"),
        ["~ port: \"80\" -> 80"]
    );
}
