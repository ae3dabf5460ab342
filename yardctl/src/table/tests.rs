use std::time::{Duration, UNIX_EPOCH};

use super::*;

#[test]
fn columns_are_as_wide_as_their_widest_cell() {
    let mut t = Table::new(&["NAME", "PORT"]);
    t.row(vec!["web-1".into(), "8080".into()]);
    t.row(vec!["a-much-longer-name".into(), "80".into()]);
    let mut out = Vec::new();
    t.write(&mut out).unwrap();
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "NAME                 PORT\n\
         web-1                8080\n\
         a-much-longer-name   80\n"
    );
}

#[test]
fn ages_read_like_kubectl() {
    let now = UNIX_EPOCH + Duration::from_secs(1_000_000);
    let ago = |secs: u64| {
        let at = prost_types::Timestamp::from(now - Duration::from_secs(secs));
        age(&at, now)
    };
    assert_eq!(ago(5), "5s");
    assert_eq!(ago(300), "5m");
    assert_eq!(ago(3 * 3600), "3h");
    assert_eq!(ago(3 * 86400), "3d");
}

#[test]
fn endpoint_rows_show_defaults_as_they_apply() {
    let t = resources(
        Kind::Endpoint,
        &[pb::Resource {
            kind: Some(Resource::Endpoint(pb::Endpoint {
                name: "web-1".into(),
                service: "web".into(),
                address: "10.0.0.1".into(),
                port: 8080,
                health: pb::Health::Draining as i32,
                revision: 7,
                ..Default::default()
            })),
            ..Default::default()
        }],
        false,
    );
    assert_eq!(
        t.rows,
        [[
            "web-1", "web", "10.0.0.1", "8080", "1", "-", "draining", "7", "-"
        ]]
    );
}

fn service(last_change: Option<pb::ChangeAuthor>) -> pb::Resource {
    pb::Resource {
        kind: Some(Resource::Service(pb::Service {
            name: "web".into(),
            labels: [("team".to_string(), "shop".to_string())].into(),
            revision: 3,
            ..Default::default()
        })),
        last_change,
    }
}

#[test]
fn the_by_column_names_who_made_the_last_change() {
    let alice = pb::ChangeAuthor {
        principal: "token/alice".into(),
        address: "10.0.0.5:51234".into(),
        at: None,
    };
    let t = resources(Kind::Service, &[service(Some(alice)), service(None)], true);
    assert_eq!(
        t.header,
        [
            "NAME",
            "PROTOCOL",
            "LB-POLICY",
            "HASH-ON",
            "HEALTH-CHECK",
            "REVISION",
            "BY",
            "LABELS"
        ]
    );
    let by: Vec<&str> = t.rows.iter().map(|r| r[6].as_str()).collect();
    assert_eq!(
        by,
        ["token/alice", "-"],
        "`-` when the control plane does not say"
    );
    assert_eq!(t.rows[0][7], "team=shop", "labels stay last");
}
