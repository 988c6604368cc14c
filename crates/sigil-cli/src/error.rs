//! Error classes, their exit codes and how errors are shown to the user.
//!
//! Every failure ends as `error: <message>` on stderr and one of the exit codes
//! documented in `--help` and `EXIT_CODES.md`, so scripts can tell "fix your input"
//! from "you are not allowed" from "the service is down".

use std::fmt;

/// Class of a failure; each has its own exit code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Anything else (exit 1).
    Other,
    /// Bad input, not found, already exists, failed precondition (exit 2).
    Usage,
    /// Permission denied or not authenticated (exit 3).
    Denied,
    /// The auth service is not reachable (exit 4).
    Unavailable,
}

impl Failure {
    /// The process exit code for this class.
    pub fn exit_code(self) -> u8 {
        match self {
            Failure::Other => 1,
            Failure::Usage => 2,
            Failure::Denied => 3,
            Failure::Unavailable => 4,
        }
    }
}

/// An error raised by the CLI itself, with its class.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CliError {
    /// The class (exit code).
    pub failure: Failure,
    /// What went wrong and what to do about it. Never contains secrets.
    pub message: String,
}

impl CliError {
    /// A bad-input error (exit 2).
    pub fn usage(message: impl Into<String>) -> Self {
        CliError {
            failure: Failure::Usage,
            message: message.into(),
        }
    }

    /// A permission error (exit 3).
    pub fn denied(message: impl Into<String>) -> Self {
        CliError {
            failure: Failure::Denied,
            message: message.into(),
        }
    }

    /// A service-unavailable error (exit 4).
    pub fn unavailable(message: impl Into<String>) -> Self {
        CliError {
            failure: Failure::Unavailable,
            message: message.into(),
        }
    }

    /// Any other error (exit 1).
    pub fn other(message: impl Into<String>) -> Self {
        CliError {
            failure: Failure::Other,
            message: message.into(),
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}

/// The class of a gRPC status code.
pub fn failure_for_code(code: tonic::Code) -> Failure {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::AlreadyExists | Code::NotFound | Code::FailedPrecondition => {
            Failure::Usage
        }
        Code::PermissionDenied | Code::Unauthenticated => Failure::Denied,
        Code::Unavailable => Failure::Unavailable,
        _ => Failure::Other,
    }
}

/// The class of an error: the first cause in the chain that has one decides.
pub fn failure_of(err: &anyhow::Error) -> Failure {
    for cause in err.chain() {
        if let Some(e) = cause.downcast_ref::<CliError>() {
            return e.failure;
        }
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            return failure_for_code(status.code());
        }
        // The agent's errors (`sigil agent start|join`): a refused join is
        // "denied", like any refusal.
        if cause
            .downcast_ref::<sigil_agent::JoinDeniedError>()
            .is_some()
        {
            return Failure::Denied;
        }
        if let Some(e) = cause.downcast_ref::<sigil_agent::StatusError>() {
            return failure_for_code(e.0.code());
        }
        if cause.downcast_ref::<tonic::transport::Error>().is_some() {
            return Failure::Unavailable;
        }
        if let Some(io) = cause.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind;
            match io.kind() {
                ErrorKind::PermissionDenied => return Failure::Denied,
                ErrorKind::ConnectionRefused | ErrorKind::ConnectionReset | ErrorKind::TimedOut => {
                    return Failure::Unavailable;
                }
                _ => {}
            }
        }
    }
    Failure::Other
}

/// True if the error is a write to a closed stdout (the reader went away, as with
/// `| head`): not worth an error message.
pub fn is_broken_pipe(err: &anyhow::Error) -> bool {
    err.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The process exit code for an error.
pub fn exit_code(err: &anyhow::Error) -> u8 {
    failure_of(err).exit_code()
}

/// The message shown after `error: `. A gRPC status shows only its message (the
/// server writes it for humans), not tonic's debug rendering with metadata.
pub fn render(err: &anyhow::Error) -> String {
    let mut parts: Vec<String> = Vec::new();
    for cause in err.chain() {
        if let Some(status) = cause.downcast_ref::<tonic::Status>() {
            let msg = status.message();
            parts.push(if msg.is_empty() {
                format!("{:?}", status.code())
            } else {
                msg.to_string()
            });
            break;
        }
        parts.push(cause.to_string());
    }
    // anyhow's chain repeats a wrapped source's text when a context message embeds
    // it; drop exact repeats so the line stays readable.
    parts.dedup();
    // Server messages quote names and values from storage: escape anything
    // that could drive the terminal.
    crate::output::safe(&parts.join(": ")).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context;
    use tonic::{Code, Status};

    #[test]
    fn grpc_codes_map_to_exit_codes() {
        let cases = [
            (Code::InvalidArgument, 2),
            (Code::AlreadyExists, 2),
            (Code::NotFound, 2),
            (Code::FailedPrecondition, 2),
            (Code::PermissionDenied, 3),
            (Code::Unauthenticated, 3),
            (Code::Unavailable, 4),
            (Code::Internal, 1),
            (Code::Unknown, 1),
            (Code::DeadlineExceeded, 1),
        ];
        for (code, want) in cases {
            let err = anyhow::Error::new(Status::new(code, "boom"));
            assert_eq!(exit_code(&err), want, "{code:?}");
        }
    }

    #[test]
    fn agent_errors_keep_their_class() {
        let denied = anyhow::Error::new(sigil_agent::JoinDeniedError("no".into()));
        assert_eq!(exit_code(&denied.context("joining")), 3);
        let renew = sigil_agent::status_error(Status::permission_denied("locked"));
        assert_eq!(exit_code(&renew.context("renewing")), 3);
        let down = sigil_agent::status_error(Status::unavailable("down"));
        assert_eq!(exit_code(&down), 4);
    }

    #[test]
    fn cli_errors_keep_their_class_through_context() {
        let err = anyhow::Error::new(CliError::usage("bad")).context("while reading");
        assert_eq!(exit_code(&err), 2);
        let err = anyhow::Error::new(CliError::denied("no")).context("connecting");
        assert_eq!(exit_code(&err), 3);
        let err = anyhow::Error::new(CliError::unavailable("down"));
        assert_eq!(exit_code(&err), 4);
        assert_eq!(exit_code(&anyhow::anyhow!("plain")), 1);
    }

    #[test]
    fn agent_errors_are_classified() {
        let denied =
            anyhow::Error::new(sigil_agent::JoinDeniedError("no".into())).context("joining");
        assert_eq!(exit_code(&denied), 3);
        let refused = sigil_agent::status_error(Status::permission_denied("locked"));
        assert_eq!(exit_code(&refused.context("renewing")), 3);
        let down = sigil_agent::status_error(Status::unavailable("down"));
        assert_eq!(exit_code(&down), 4);
        let bad = sigil_agent::status_error(Status::invalid_argument("x"));
        assert_eq!(exit_code(&bad), 2);
        assert_eq!(
            render(&sigil_agent::status_error(Status::permission_denied(
                "locked"
            ))),
            "refused: locked"
        );
    }

    #[test]
    fn io_errors_are_classified() {
        let denied = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "x");
        assert_eq!(exit_code(&anyhow::Error::new(denied)), 3);
        let refused = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "x");
        assert_eq!(exit_code(&anyhow::Error::new(refused)), 4);
        let other = std::io::Error::other("x");
        assert_eq!(exit_code(&anyhow::Error::new(other)), 1);
        let pipe = std::io::Error::from(std::io::ErrorKind::BrokenPipe);
        assert!(is_broken_pipe(&anyhow::Error::new(pipe).context("writing")));
        assert!(!is_broken_pipe(&anyhow::anyhow!("x")));
    }

    #[test]
    fn render_shows_status_message_only() {
        let err: anyhow::Result<()> = Err(Status::not_found("role \"x\" not found").into());
        let err = err.context("get role/x").unwrap_err();
        assert_eq!(render(&err), "get role/x: role \"x\" not found");
        let empty = anyhow::Error::new(Status::new(Code::Unavailable, ""));
        assert_eq!(render(&empty), "Unavailable");
        let hostile = anyhow::Error::new(Status::not_found("bot \"x\u{1b}[2J\u{202E}\" not found"));
        assert_eq!(render(&hostile), "bot \"x\\u{1b}[2J\\u{202e}\" not found");
    }
}
