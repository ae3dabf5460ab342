//! What can go wrong, as one line for the operator and an exit code for
//! scripts, and the mapping from gRPC statuses to both.

use std::fmt;

use tonic::Code;

/// How the process ends, documented in `yardctl --help`; [`Exit::code`]
/// is the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Everything done (`diff`: no differences).
    Ok,
    /// Bad flags or arguments, or a manifest that does not parse; nothing
    /// was sent.
    Usage,
    /// `diff` found differences: an apply would change something.
    Differences,
    /// The control plane refused the request (invalid, over its size
    /// limit, conflict, still referenced, not found, not authenticated or
    /// not permitted), or a
    /// node refused the configuration during a rollout; nothing was written.
    Rejected,
    /// The control plane could not be reached or failed to answer; retrying
    /// may help.
    Unavailable,
    /// A wait (`rollout status`) ran out of time.
    Timeout,
}

impl Exit {
    /// The process exit code. `diff` follows `kubectl diff` and `diff(1)`:
    /// 1 means "differences", so a manifest that does not parse is 2 there.
    pub fn code(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Usage | Exit::Differences => 1,
            Exit::Rejected => 2,
            Exit::Unavailable => 3,
            Exit::Timeout => 4,
        }
    }
}

/// A failure: its exit code and one line saying what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    /// How the process exits.
    pub exit: Exit,
    /// What to tell the operator, without the `error: ` prefix; empty when
    /// there is nothing to say (stdout closed by a pager, for instance).
    pub message: String,
}

impl Error {
    fn new(exit: Exit, message: impl fmt::Display) -> Self {
        Self {
            exit,
            message: one_line(&message.to_string()),
        }
    }

    /// Bad usage or an unreadable manifest.
    pub fn usage(message: impl fmt::Display) -> Self {
        Self::new(Exit::Usage, message)
    }

    /// Refused by the control plane or by a node.
    pub fn rejected(message: impl fmt::Display) -> Self {
        Self::new(Exit::Rejected, message)
    }

    /// No usable answer from the control plane.
    pub fn unavailable(message: impl fmt::Display) -> Self {
        Self::new(Exit::Unavailable, message)
    }

    /// `diff` found differences; they are the output, so there is nothing
    /// more to say.
    pub fn differences() -> Self {
        Self {
            exit: Exit::Differences,
            message: String::new(),
        }
    }

    /// A wait ran out of time.
    pub fn timeout(message: impl fmt::Display) -> Self {
        Self::new(Exit::Timeout, message)
    }

    /// A failed RPC, with the server's message.
    pub fn status(status: &tonic::Status) -> Self {
        // A request over the control plane's size limit will never pass:
        // a refusal, not an exhaustion that a retry may outlast.
        let exit = if too_large(status) {
            Exit::Rejected
        } else {
            exit_for(status.code())
        };
        Self::new(exit, describe(status))
    }

    /// Writing the output failed. A closed pipe (`yardctl get ... | head`)
    /// is not worth a message.
    pub fn output(err: std::io::Error) -> Self {
        if err.kind() == std::io::ErrorKind::BrokenPipe {
            Self {
                exit: Exit::Ok,
                message: String::new(),
            }
        } else {
            Self::usage(format_args!("cannot write the output: {err}"))
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<std::io::Error> for Error {
    fn from(err: std::io::Error) -> Self {
        Self::output(err)
    }
}

/// The exit code for a status code: refusals are 2; anything that says the
/// request may not have been heard, or the server failed, is 3.
pub fn exit_for(code: Code) -> Exit {
    match code {
        Code::Ok => Exit::Ok,
        Code::InvalidArgument
        | Code::FailedPrecondition
        | Code::Aborted
        | Code::NotFound
        | Code::AlreadyExists
        | Code::OutOfRange
        | Code::PermissionDenied
        | Code::Unauthenticated
        | Code::Unimplemented => Exit::Rejected,
        Code::Unavailable
        | Code::Unknown
        | Code::Internal
        | Code::DeadlineExceeded
        | Code::Cancelled
        | Code::ResourceExhausted
        | Code::DataLoss => Exit::Unavailable,
    }
}

/// Whether `status` says the request was over the control plane's size
/// limit (`RESOURCE_EXHAUSTED` with the `REQUEST_TOO_LARGE` reason).
fn too_large(status: &tonic::Status) -> bool {
    request_limit(status).is_some()
}

/// The control plane's request size limit in bytes, when `status` refuses a
/// request for being over it (`RESOURCE_EXHAUSTED`, reason
/// `REQUEST_TOO_LARGE`; `0` when the limit is not given).
pub fn request_limit(status: &tonic::Status) -> Option<usize> {
    use tonic_types::StatusExt;
    if status.code() != Code::ResourceExhausted {
        return None;
    }
    let info = status.get_details_error_info()?;
    (info.reason == "REQUEST_TOO_LARGE").then(|| {
        info.metadata
            .get("limit")
            .and_then(|l| l.parse().ok())
            .unwrap_or(0)
    })
}

/// The server's message, or a description of the transport failure when
/// the status was made on this side (connection refused, reset).
fn describe(status: &tonic::Status) -> String {
    let message = status.message().trim();
    let message = message.strip_prefix("invalid request: ").unwrap_or(message);
    match status.code() {
        Code::Unavailable | Code::Unknown | Code::Cancelled => {
            let cause = root_cause(status);
            match (message.is_empty(), cause) {
                (true, Some(cause)) => format!("control plane unavailable: {cause}"),
                (false, Some(cause)) if !message.contains(&cause) => {
                    format!("control plane unavailable: {message}: {cause}")
                }
                (true, None) => "control plane unavailable".into(),
                _ => format!("control plane unavailable: {message}"),
            }
        }
        Code::DeadlineExceeded => format!("the control plane did not answer in time: {message}"),
        // The server says what the call needs and what the principal has;
        // the prefix says which of the two refusals this is.
        Code::PermissionDenied => prefixed("permission denied", message),
        Code::Unauthenticated => format!(
            "{} (give a valid token with --token or YARD_TOKEN)",
            prefixed("not authenticated", message)
        ),
        // A server that does not know the service or method answers with
        // no message at all.
        Code::Unimplemented if message.is_empty() => {
            "the control plane does not implement this call; it may be older than yardctl".into()
        }
        code if message.is_empty() => code.description().to_string(),
        _ => message.to_string(),
    }
}

/// `label: message`, unless the message already starts with the label.
fn prefixed(label: &str, message: &str) -> String {
    let starts = message
        .get(..label.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(label));
    match message {
        "" => label.to_string(),
        _ if starts => message.to_string(),
        _ => format!("{label}: {message}"),
    }
}

/// The innermost error behind `err`, which names the real problem
/// ("Connection refused (os error 111)") where the outer ones say
/// "transport error".
pub fn root_cause(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut source = err.source()?;
    while let Some(next) = source.source() {
        source = next;
    }
    Some(source.to_string())
}

/// Newlines and runs of spaces folded, so every failure is one line.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests;
