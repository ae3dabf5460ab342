//! The one mapping from the control plane's errors (store, node requests,
//! validation) to the `tonic::Status` a client sees. Storage details are
//! logged here and never sent.

use switchyard::validate::Invalid;
use tonic::Status;
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use tracing::{error, warn};

use crate::store;

/// What a client hears while the store cannot be reached: retryable, here
/// or on another replica.
const UNAVAILABLE: &str =
    "the configuration store cannot be reached; try again later or another replica";

/// Turns a store error into the status a client sees. Storage details are
/// logged here and never sent.
pub fn status(err: store::Error) -> Status {
    use store::Error as E;
    match err {
        E::Invalid(invalid) => invalid_argument(invalid),
        e @ E::Conflict { .. } => Status::aborted(e.to_string()),
        e @ E::Referenced { .. } => Status::failed_precondition(e.to_string()),
        e @ (E::NotFound(_) | E::TokenNotFound(_)) => Status::not_found(e.to_string()),
        e @ E::Exists(_) => Status::already_exists(e.to_string()),
        e @ E::Compacted { .. } => Status::out_of_range(format!(
            "{e}; list again and watch from the list's revision"
        )),
        // Known to be down: said once by the server's upkeep, not per call.
        E::Unavailable => Status::unavailable(UNAVAILABLE),
        e if e.is_unavailable() => {
            warn!(error = %e, "store unreachable");
            Status::unavailable(UNAVAILABLE)
        }
        e @ (E::Corrupt(_) | E::Database(_) | E::Migrate(_) | E::Bootstrap(_)) => {
            error!(error = %e, "store failure");
            Status::internal("internal storage error; the details are in the control plane's log")
        }
    }
}

/// The status for a refused request of an agent (health report,
/// registration).
pub fn node_status(err: crate::nodes::Error) -> Status {
    use crate::nodes::Error as E;
    match err {
        E::Invalid(invalid) => invalid_argument(invalid),
        e @ E::NotOwned { .. } => Status::permission_denied(e.to_string()),
        E::Store(e) => status(e),
    }
}

/// Most bytes of `FieldViolation`s in the `BadRequest` detail of an
/// `INVALID_ARGUMENT` (before base64), defined beside
/// [`switchyard::validate::MAX_MESSAGE`] in the API crate.
///
/// The status travels as `grpc-message` (at most
/// [`switchyard::validate::MAX_MESSAGE`] bytes) and `grpc-status-details-bin`,
/// the base64 of a `google.rpc.Status` that repeats the message beside the
/// details: 768 + (768 + 1280) × 4/3 ≈ 3.5 KiB. So the whole status stays
/// under 4 KiB of metadata whatever the request, half the 8 KiB that gRPC
/// clients (grpc-core, grpc-java) accept by default.
pub use switchyard::validate::MAX_DETAILS;

/// `INVALID_ARGUMENT` listing the violations in the message and as a
/// `google.rpc.BadRequest` detail, in order, as many as fit in a bounded
/// status (see [`Invalid::reported`]). When some are left out, the message
/// ends with how many, and the detail's last entry, with an empty field,
/// says so too.
pub fn invalid_argument(invalid: Invalid) -> Status {
    // Each FieldViolation costs its two strings and about 6 bytes of
    // protobuf framing.
    let (shown, left) = invalid.reported(MAX_DETAILS, 6);
    let mut violations: Vec<FieldViolation> = shown
        .iter()
        .map(|v| FieldViolation::new(&v.field, &v.reason))
        .collect();
    if left > 0 {
        violations.push(FieldViolation::new(
            "",
            format!("and {left} more problems not shown: fix these and try again"),
        ));
    }
    Status::with_error_details(
        tonic::Code::InvalidArgument,
        format!("invalid request: {invalid}"),
        ErrorDetails::with_bad_request(violations),
    )
}
