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

#[test]
fn refusals_of_the_caller_say_which_one_and_keep_the_reason() {
    let denied = Error::status(&Status::permission_denied(
        "Apply needs the admin role; token/ci has the reader role",
    ));
    assert_eq!(denied.exit, Exit::Rejected);
    assert_eq!(
        denied.message,
        "permission denied: Apply needs the admin role; token/ci has the reader role"
    );
    let already = Error::status(&Status::permission_denied("Permission denied: agents only"));
    assert_eq!(already.message, "Permission denied: agents only");

    let unknown = Error::status(&Status::unauthenticated("unknown or revoked token"));
    assert_eq!(unknown.exit, Exit::Rejected);
    assert_eq!(
        unknown.message,
        "not authenticated: unknown or revoked token (give a valid token with --token or YARD_TOKEN)"
    );
    let bare = Error::status(&Status::unauthenticated(""));
    assert_eq!(
        bare.message,
        "not authenticated (give a valid token with --token or YARD_TOKEN)"
    );
}

#[test]
fn a_status_without_a_message_still_says_something() {
    let e = Error::status(&Status::unimplemented(""));
    assert_eq!(e.exit, Exit::Rejected);
    assert_eq!(
        e.message,
        "the control plane does not implement this call; it may be older than yardctl"
    );
    assert!(!Error::status(&Status::not_found("")).message.is_empty());
}

#[test]
fn a_request_over_the_size_limit_is_a_refusal() {
    use tonic_types::{ErrorDetails, StatusExt};
    let message = "the request message is 5000000 bytes, over the control plane's limit of \
                   4194304 bytes (4 MiB): send fewer items per request, or raise --max-request-size";
    let too_large = Status::with_error_details(
        Code::ResourceExhausted,
        message,
        ErrorDetails::with_error_info("REQUEST_TOO_LARGE", "switchyard.v1", []),
    );
    let e = Error::status(&too_large);
    assert_eq!(e.exit, Exit::Rejected);
    assert_eq!(e.message, message);
    // Other exhaustion (stream limits) may pass later.
    let busy = Error::status(&Status::resource_exhausted("too many streams"));
    assert_eq!(busy.exit, Exit::Unavailable);
}
