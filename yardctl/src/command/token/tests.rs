use std::time::{Duration, UNIX_EPOCH};

use super::*;
use crate::error::Exit;

fn args(role: Role, node: Option<&str>) -> TokenCreateArgs {
    TokenCreateArgs {
        name: "edge".into(),
        role,
        node: node.map(str::to_string),
    }
}

#[test]
fn only_agent_tokens_name_a_node() {
    let agent = create_request(&args(Role::Agent, Some("edge-1"))).unwrap();
    assert_eq!(
        agent,
        pb::CreateTokenRequest {
            name: "edge".into(),
            role: pb::Role::Agent as i32,
            node: "edge-1".into(),
        }
    );
    let missing = create_request(&args(Role::Agent, None)).unwrap_err();
    assert_eq!(missing.exit, Exit::Usage);
    assert_eq!(
        missing.message,
        "--node: required with --role agent (the node the token speaks for)"
    );
    let misplaced = create_request(&args(Role::Reader, Some("edge-1"))).unwrap_err();
    assert_eq!(
        misplaced.message,
        "--node: only agent tokens are bound to a node; leave it out with --role reader"
    );
    let blank = create_request(&TokenCreateArgs {
        name: " ".into(),
        ..args(Role::Admin, None)
    })
    .unwrap_err();
    assert_eq!(blank.message, "NAME: the token's name must not be empty");
}

fn tokens(now: SystemTime) -> Vec<pb::Token> {
    let ago = |secs| {
        Some(prost_types::Timestamp::from(
            now - Duration::from_secs(secs),
        ))
    };
    vec![
        pb::Token {
            name: "ci".into(),
            role: pb::Role::Reader as i32,
            node: String::new(),
            created_at: ago(3 * 86400),
            created_by: "token/alice".into(),
            revoked_at: ago(300),
        },
        pb::Token {
            name: "edge-1".into(),
            role: pb::Role::Agent as i32,
            node: "edge-1".into(),
            created_at: ago(45),
            created_by: "bootstrap".into(),
            revoked_at: None,
        },
    ]
}

#[test]
fn the_table_shows_role_node_ages_creator_and_revocation() {
    let now = UNIX_EPOCH + Duration::from_secs(1_796_407_796);
    let mut out = Vec::new();
    table(&tokens(now), now).write(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "NAME     ROLE     NODE     CREATED   BY            REVOKED\n\
         ci       reader   -        3d        token/alice   5m\n\
         edge-1   agent    edge-1   45s       bootstrap     -\n"
    );
}

#[test]
fn documents_use_the_api_field_names_and_times() {
    let now = UNIX_EPOCH + Duration::from_secs(1_796_407_796);
    let ci = &tokens(now)[0];
    assert_eq!(
        manifest::to_yaml(&[document(ci)]),
        "name: ci\nrole: reader\ncreatedAt: 2026-12-01T18:09:56Z\ncreatedBy: token/alice\n\
         revokedAt: 2026-12-04T18:04:56Z\n"
    );
    let created = secret_document(&tokens(now)[1], "s3cret");
    let json: serde_json::Value = serde_json::from_str(&manifest::to_json(&created)).unwrap();
    assert_eq!(json["node"], "edge-1");
    assert_eq!(json["secret"], "s3cret");
}

#[test]
fn the_note_after_create_says_the_secret_is_shown_once() {
    let now = UNIX_EPOCH + Duration::from_secs(1_796_407_796);
    let [ci, edge] = &tokens(now)[..] else {
        unreachable!()
    };
    assert_eq!(
        created_note(ci),
        "token/ci created with the reader role; keep its secret now: it is not shown again"
    );
    assert!(
        created_note(edge).starts_with("token/edge-1 created with the agent role for node edge-1;")
    );
}

#[test]
fn a_control_plane_without_token_service_is_named() {
    let target = "http://127.0.0.1:7700";
    let e = refused(&tonic::Status::unimplemented(""), target);
    assert_eq!(e.exit, Exit::Rejected);
    assert_eq!(
        e.message,
        "the control plane at http://127.0.0.1:7700 does not serve TokenService; it predates token management"
    );
    let denied = refused(
        &tonic::Status::permission_denied(
            "CreateToken needs the admin role; token/ci has the reader role",
        ),
        target,
    );
    assert_eq!(
        denied.message,
        "permission denied: CreateToken needs the admin role; token/ci has the reader role"
    );
}
