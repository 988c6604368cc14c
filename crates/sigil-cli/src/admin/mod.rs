//! The admin verbs. Each talks to the auth service's `AdminService` through
//! [`connect::connect`].

pub mod audit;
pub mod bots;
pub mod ca;
pub mod connect;
pub mod db;
pub mod join_tokens;
pub mod kube;
pub mod locks;
pub mod render;
pub mod resources;
pub mod status;
pub mod tokens;
pub mod web_login;
pub mod workload_identity;

use crate::error::CliError;
use std::time::Duration;

/// Checks a name from the command line (`what` is e.g. `bot name` or
/// `--bot`) with the rule the server applies to every name, so a bad name is
/// refused before anything is sent (exit 2).
pub fn check_name_arg(kind: &str, what: &str, name: &str) -> Result<(), CliError> {
    sigil_types::check_name(kind, name)
        .map_err(|e| CliError::usage(format!("{what}: {}", e.message)))
}

/// Parses a duration flag; the error names the flag (`invalid --ttl "5x": ...`).
pub fn parse_flag_duration(flag: &str, value: &str) -> Result<Duration, CliError> {
    sigil_types::parse_duration(value)
        .map_err(|e| CliError::usage(format!("invalid --{flag}: {e}")))
}

/// Seconds of an optional duration flag; 0 (server default / none) when unset.
pub fn flag_secs(flag: &str, value: Option<&str>) -> Result<u64, CliError> {
    match value {
        None => Ok(0),
        Some(v) => {
            let d = parse_flag_duration(flag, v)?;
            if d.is_zero() {
                return Err(CliError::usage(format!(
                    "invalid --{flag} {v:?}: must be at least 1s"
                )));
            }
            // Round sub-second values up so "500ms" is not silently "unset".
            Ok(d.as_secs() + u64::from(d.subsec_nanos() > 0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;

    #[test]
    fn duration_flags() {
        assert_eq!(flag_secs("ttl", None), Ok(0));
        assert_eq!(flag_secs("ttl", Some("15m")), Ok(900));
        assert_eq!(flag_secs("ttl", Some("1h30m")), Ok(5400));
        assert_eq!(flag_secs("ttl", Some("500ms")), Ok(1));
        let err = flag_secs("token-ttl", Some("5x")).unwrap_err();
        assert_eq!(err.failure, Failure::Usage);
        assert!(
            err.message.starts_with("invalid --token-ttl"),
            "{}",
            err.message
        );
        assert!(flag_secs("ttl", Some("0s")).is_err());
        assert!(
            parse_flag_duration("since", "-1h")
                .unwrap_err()
                .message
                .contains("--since")
        );
    }
}
