//! The agent's errors that callers tell apart: a denied join (final) and a
//! gRPC status from the auth service (refused, unreachable, ...).

/// A refusal that retrying will not fix (the join was denied).
#[derive(Debug)]
pub struct JoinDeniedError(pub String);
impl std::fmt::Display for JoinDeniedError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "join denied: {}", self.0)
    }
}
impl std::error::Error for JoinDeniedError {}

/// A gRPC status from the auth service as an error a person can read. It
/// keeps the status, so the CLI's exit code tells "refused" (3) from
/// "unreachable" (4).
#[derive(Debug)]
pub struct StatusError(pub tonic::Status);

impl std::fmt::Display for StatusError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.0.code() {
            tonic::Code::Unavailable => "auth service unreachable",
            tonic::Code::PermissionDenied => "refused",
            tonic::Code::Unauthenticated => "not authenticated",
            tonic::Code::InvalidArgument => "invalid request",
            tonic::Code::DeadlineExceeded => "timed out",
            _ => "auth service error",
        };
        write!(f, "{what}: {}", self.0.message())
    }
}

impl std::error::Error for StatusError {}

/// A gRPC status as an error a person can read (see [`StatusError`]).
pub fn status_error(s: tonic::Status) -> anyhow::Error {
    anyhow::Error::new(StatusError(s))
}

pub(crate) fn join_status(s: tonic::Status) -> anyhow::Error {
    if s.code() == tonic::Code::PermissionDenied {
        anyhow::Error::new(JoinDeniedError(
            "the auth service refused this join; an admin finds the reason with `sigil audit ls --type bot.join.denied` (for a single-use token: create a new one with `sigil tokens add --bot NAME`)".into(),
        ))
    } else {
        status_error(s)
    }
}
