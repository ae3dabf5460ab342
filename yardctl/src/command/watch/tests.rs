use super::*;

fn change(author: Option<pb::ChangeAuthor>) -> pb::Change {
    pb::Change {
        revision: 42,
        op: pb::ChangeOp::Upsert as i32,
        r#ref: Some(pb::ResourceRef {
            kind: pb::Kind::Endpoint as i32,
            name: "web-1".into(),
        }),
        resource: None,
        author,
    }
}

fn alice() -> pb::ChangeAuthor {
    pb::ChangeAuthor {
        principal: "token/alice".into(),
        address: "10.0.0.5:51234".into(),
        at: Some(prost_types::Timestamp {
            seconds: 1_796_407_796,
            nanos: 250_000_000,
        }),
    }
}

#[test]
fn a_line_says_who_made_the_change_from_where_and_when() {
    assert_eq!(
        line(&change(Some(alice()))).unwrap(),
        "42       upsert  endpoint/web-1 by token/alice from 10.0.0.5:51234 at 2026-12-04T18:09:56Z"
    );
}

#[test]
fn a_line_leaves_out_what_the_control_plane_does_not_tell() {
    assert_eq!(
        line(&change(None)).unwrap(),
        "42       upsert  endpoint/web-1",
        "a control plane without an audit trail"
    );
    let own = pb::ChangeAuthor {
        principal: "control-plane".into(),
        address: String::new(),
        at: None,
    };
    assert_eq!(
        line(&change(Some(own))).unwrap(),
        "42       upsert  endpoint/web-1 by control-plane",
        "the control plane's own writes have no address"
    );
}

#[test]
fn a_document_carries_the_author_in_full() {
    let doc = document(&change(Some(alice()))).unwrap();
    let json = serde_json::to_string(&doc).unwrap();
    assert_eq!(
        json,
        r#"{"revision":42,"op":"upsert","kind":"Endpoint","name":"web-1","author":{"principal":"token/alice","address":"10.0.0.5:51234","at":"2026-12-04T18:09:56.250Z"}}"#
    );
    let without = serde_json::to_string(&document(&change(None)).unwrap()).unwrap();
    assert_eq!(
        without,
        r#"{"revision":42,"op":"upsert","kind":"Endpoint","name":"web-1"}"#
    );
}
