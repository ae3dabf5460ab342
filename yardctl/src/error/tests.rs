use tonic::{Code, Status};

use super::*;

#[test]
fn refusals_and_outages_have_distinct_exit_codes() {
    assert_eq!(exit_for(Code::InvalidArgument), Exit::Rejected);
    assert_eq!(exit_for(Code::FailedPrecondition), Exit::Rejected);
    assert_eq!(exit_for(Code::Aborted), Exit::Rejected);
    assert_eq!(exit_for(Code::NotFound), Exit::Rejected);
    assert_eq!(exit_for(Code::Unavailable), Exit::Unavailable);
    assert_eq!(exit_for(Code::Internal), Exit::Unavailable);
}

#[test]
fn messages_are_one_line_without_the_servers_prefix() {
    let e = Error::status(&Status::invalid_argument(
        "invalid request: items[0].resource.endpoint.port: port 0\nis not in 1..65535",
    ));
    assert_eq!(e.exit, Exit::Rejected);
    assert_eq!(
        e.message,
        "items[0].resource.endpoint.port: port 0 is not in 1..65535"
    );
}

#[test]
fn a_closed_pipe_exits_quietly() {
    let e = Error::output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
    assert_eq!(e.exit, Exit::Ok);
    assert!(e.message.is_empty());
}
