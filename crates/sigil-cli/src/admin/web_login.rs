//! `sigil admin login`: a single-use link to the web console.

use clap::Subcommand;
use serde_json::json;
use sigil_proto::v1::CreateWebLoginRequest;

use super::connect::connect;
use crate::cli::{Format, FormatArg, GlobalArgs};
use crate::output;

/// `sigil admin ...`
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Print a link that opens the web console (https://PUBLIC_ADDR/web/) as
    /// you: single use, valid for 2 minutes. The session it opens lasts at
    /// most 12 hours (30 minutes idle) and can do what your identity can.
    Login(FormatArg),
}

/// Runs a `sigil admin` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &AdminCommand) -> anyhow::Result<()> {
    match cmd {
        AdminCommand::Login(f) => {
            let mut client = connect(global).await?;
            let r = client
                .create_web_login(CreateWebLoginRequest {})
                .await?
                .into_inner();
            match f.format {
                Format::Json => output::out(&output::json(
                    &json!({"url": r.url, "expires": output::unix_time(r.expires_unix)}),
                )?)?,
                Format::Text => output::out(&format!(
                    "{}\nOpen it within 2 minutes (until {}); it works once.",
                    r.url,
                    output::short_time(&output::unix_time(r.expires_unix))
                ))?,
            }
            Ok(())
        }
    }
}
