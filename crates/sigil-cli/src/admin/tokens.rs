//! `sigil tokens add|ls|rm`.

use super::bots::{JoinInfo, fallback_server, print_join_info};
use super::connect::connect;
use super::flag_secs;
use super::resources::{ResourceKind, delete, list, print_list};
use crate::cli::{GlobalArgs, TokensAddArgs, TokensCommand};
use sigil_proto::v1::AddTokenRequest;

/// Runs a `sigil tokens` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &TokensCommand) -> anyhow::Result<()> {
    match cmd {
        TokensCommand::Add(args) => add(global, args).await,
        TokensCommand::Ls(f) => {
            let mut client = connect(global).await?;
            let items = list(&mut client, ResourceKind::Token, "").await?;
            print_list(ResourceKind::Token, &items, f.format)
        }
        TokensCommand::Rm(n) => delete(global, ResourceKind::Token, &n.name).await,
    }
}

async fn add(global: &GlobalArgs, args: &TokensAddArgs) -> anyhow::Result<()> {
    let req = AddTokenRequest {
        bot: args.bot.clone(),
        ttl_seconds: flag_secs("ttl", args.ttl.as_deref())?,
        join_method: args.join_method.clone(),
    };
    let mut client = connect(global).await?;
    let resp = client.add_token(req).await?.into_inner();
    let info = JoinInfo {
        bot: if resp.bot.is_empty() {
            args.bot.clone()
        } else {
            resp.bot
        },
        token: resp.token,
        expires_unix: resp.expires_unix,
        ca_pin: resp.ca_pin,
        auth_server: fallback_server(resp.auth_server, global),
    };
    let headline = format!("Join token for bot {:?} created.", info.bot);
    print_join_info(&info, &headline, args.format.format)
}
