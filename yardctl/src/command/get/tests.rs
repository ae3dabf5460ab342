use super::*;

#[test]
fn kinds_names_and_refs() {
    assert_eq!(
        wanted("svc,ep", &[]).unwrap(),
        Wanted::Kinds(vec![Kind::Service, Kind::Endpoint])
    );
    assert_eq!(
        wanted("all", &[]).unwrap(),
        Wanted::Kinds(Kind::ALL.to_vec())
    );
    assert_eq!(
        wanted("endpoints", &["a".into(), "b".into()]).unwrap(),
        Wanted::Named(vec![
            Ref::new(Kind::Endpoint, "a"),
            Ref::new(Kind::Endpoint, "b")
        ])
    );
    assert_eq!(
        wanted("svc/web", &["route/web".into()]).unwrap(),
        Wanted::Named(vec![
            Ref::new(Kind::Service, "web"),
            Ref::new(Kind::Route, "web")
        ])
    );
    assert!(wanted("svc,ep", &["web".into()]).is_err());
    assert!(
        wanted("pods", &[])
            .unwrap_err()
            .message
            .contains("unknown kind `pods`")
    );
}
