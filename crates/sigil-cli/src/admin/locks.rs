//! `sigil locks add|ls|rm`.

use super::connect::connect;
use super::flag_secs;
use super::render::lock_target;
use super::resources::{ResourceKind, delete, list, print_list};
use crate::cli::{Format, GlobalArgs, LocksAddArgs, LocksCommand};
use crate::error::CliError;
use crate::output::{self, str_at};
use serde_json::Value;
use sigil_proto::v1::AddLockRequest;

/// Runs a `sigil locks` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &LocksCommand) -> anyhow::Result<()> {
    match cmd {
        LocksCommand::Add(args) => add(global, args).await,
        LocksCommand::Ls(f) => {
            let mut client = connect(global).await?;
            let items = list(&mut client, ResourceKind::Lock, "").await?;
            print_list(ResourceKind::Lock, &items, f.format)
        }
        LocksCommand::Rm(n) => delete(global, ResourceKind::Lock, &n.name).await,
    }
}

/// Builds the request from the flags (exactly one target; clap enforces it, this
/// re-checks so a library caller gets an error instead of a bad request).
pub fn request(args: &LocksAddArgs) -> Result<AddLockRequest, CliError> {
    let (kind, value) = args.target.target().ok_or_else(|| {
        CliError::usage(
            "say what to lock: --bot, --bot-instance, --role, --token, --login, --spiffe-id or --db-user",
        )
    })?;
    if value.is_empty() {
        return Err(CliError::usage(format!(
            "--{} must not be empty",
            kind.replace('_', "-")
        )));
    }
    // The rule the server applies to the target, so a bad value is refused here.
    if let Some(t) = sigil_types::LockTarget::from_parts(kind, value) {
        t.check()
            .map_err(|e| CliError::usage(format!("--{}: {}", kind.replace('_', "-"), e.message)))?;
    }
    Ok(AddLockRequest {
        target_kind: kind.to_string(),
        target_value: value.to_string(),
        ttl_seconds: flag_secs("ttl", args.ttl.as_deref())?,
        message: args.message.clone().unwrap_or_default(),
    })
}

async fn add(global: &GlobalArgs, args: &LocksAddArgs) -> anyhow::Result<()> {
    let req = request(args)?;
    let mut client = connect(global).await?;
    let resp = client.add_lock(req).await?.into_inner();
    let v: Value = serde_json::from_str(&resp.json)?;
    match args.format.format {
        Format::Json => output::out(&output::json(&v)?)?,
        Format::Text => {
            let expires = match str_at(&v, "/metadata/expires") {
                e if e == "-" => "never expires".to_string(),
                e => format!("expires {}", output::short_time(&e)),
            };
            output::out(&format!(
                "lock {} created on {} ({expires})",
                str_at(&v, "/metadata/name"),
                lock_target(&v)
            ))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{FormatArg, LockTargetArgs};

    #[test]
    fn request_from_flags() {
        let args = LocksAddArgs {
            target: LockTargetArgs {
                bot_instance: Some("5f3c1d7e-8c36-4d7a-9f35-0c1f1b2a3c4d".into()),
                ..Default::default()
            },
            ttl: Some("1h".into()),
            message: Some("stolen".into()),
            format: FormatArg::default(),
        };
        let req = request(&args).unwrap();
        assert_eq!(req.target_kind, "bot_instance");
        assert_eq!(req.target_value, "5f3c1d7e-8c36-4d7a-9f35-0c1f1b2a3c4d");
        assert_eq!(req.ttl_seconds, 3600);
        assert_eq!(req.message, "stolen");

        let none = LocksAddArgs {
            target: LockTargetArgs::default(),
            ttl: None,
            message: None,
            format: FormatArg::default(),
        };
        assert!(request(&none).is_err());
        // A target that could never name anything is refused here (exit 2).
        let bad = LocksAddArgs {
            target: LockTargetArgs {
                bot_instance: Some("id-1".into()),
                ..Default::default()
            },
            ttl: None,
            message: None,
            format: FormatArg::default(),
        };
        assert!(request(&bad).unwrap_err().message.contains("UUID"));
        let bad_ttl = LocksAddArgs {
            ttl: Some("soon".into()),
            ..args
        };
        assert!(request(&bad_ttl).unwrap_err().message.contains("--ttl"));
    }
}
