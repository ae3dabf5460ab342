use std::sync::Arc;

use switchyard::resource::Kind;
use tonic_types::{ErrorDetails, FieldViolation};

use super::*;
use crate::error::Exit;

fn source(document: usize) -> Source {
    Source {
        file: Arc::from("web.yaml"),
        document,
        item: None,
    }
}

fn invalid(violations: &[(&str, &str)]) -> tonic::Status {
    let details = ErrorDetails::with_bad_request(
        violations
            .iter()
            .map(|(f, r)| FieldViolation::new(*f, *r))
            .collect::<Vec<_>>(),
    );
    tonic::Status::with_error_details(tonic::Code::InvalidArgument, "invalid request", details)
}

#[test]
fn violations_name_the_resource_its_file_and_the_manifest_field() {
    let web3 = Ref::new(Kind::Endpoint, "web-3");
    let web = Ref::new(Kind::Service, "web");
    let (s1, s2) = (source(1), source(2));
    let items = [(&web, Some(&s1)), (&web3, Some(&s2))];
    let e = batch_error(
        &invalid(&[
            (
                "items[1].resource.endpoint.port",
                "port 0 is not in 1..65535",
            ),
            (
                "items[1].resource.endpoint.health_check.interval",
                "too short",
            ),
            ("items[0].resource.service.labels", "too many"),
        ]),
        &items,
    );
    assert_eq!(e.exit, Exit::Rejected);
    assert_eq!(
        e.message,
        "endpoint/web-3 (web.yaml, document 2): spec.port: port 0 is not in 1..65535; \
         spec.healthCheck.interval: too short; \
         service/web (web.yaml, document 1): labels: too many"
    );
}

#[test]
fn violations_outside_the_items_are_kept_as_sent() {
    let e = batch_error(&invalid(&[("items", "1001 items; at most 1000")]), &[]);
    assert_eq!(e.message, "items: 1001 items; at most 1000");
}

#[test]
fn a_status_without_details_keeps_its_message() {
    let web = Ref::new(Kind::Service, "web");
    let e = batch_error(
        &tonic::Status::failed_precondition("service/web is still referenced by route/web"),
        &[(&web, None)],
    );
    assert_eq!(e.exit, Exit::Rejected);
    assert_eq!(e.message, "service/web is still referenced by route/web");
}

#[test]
fn the_servers_count_of_problems_left_out_is_kept() {
    let web = Ref::new(Kind::Service, "web");
    let s1 = source(1);
    let e = batch_error(
        &invalid(&[
            ("items[0].resource.service.lb_policy", "bad"),
            ("", "and 7 more problems not shown: fix these and try again"),
        ]),
        &[(&web, Some(&s1))],
    );
    assert_eq!(
        e.message,
        "service/web (web.yaml, document 1): spec.lbPolicy: bad; \
         and 7 more problems not shown: fix these and try again"
    );
}
