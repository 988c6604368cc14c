//! `sigil tokens add|ls|rm|test`.

use super::bots::{JoinInfo, fallback_server, print_join_info};
use super::connect::connect;
use super::flag_secs;
use super::join_tokens;
use super::resources::{ResourceKind, delete, list, print_list};
use crate::cli::{Format, GlobalArgs, TokensAddArgs, TokensCommand, TokensTestArgs};
use crate::output;
use serde_json::json;
use sigil_proto::v1::{AddTokenRequest, ResourceRef};

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
        TokensCommand::Test(args) => test(global, args).await,
    }
}

async fn test(global: &GlobalArgs, args: &TokensTestArgs) -> anyhow::Result<()> {
    let claims = join_tokens::read_claims(&args.claims)?;
    let mut client = connect(global).await?;
    let json = client
        .get_resource(ResourceRef {
            kind: "token".into(),
            name: args.name.clone(),
        })
        .await?
        .into_inner()
        .json;
    let token: sigil_types::Token = serde_json::from_str(&json)?;
    let (report, decision) = join_tokens::test_report(&token, &claims)?;
    join_tokens::print_test(&report, &decision, args.format.format)
}

async fn add(global: &GlobalArgs, args: &TokensAddArgs) -> anyhow::Result<()> {
    super::check_name_arg("bot", "--bot", &args.bot)?;
    if let Some(name) = &args.name {
        super::check_name_arg("token", "--name", name)?;
    }
    let mut req = AddTokenRequest {
        bot: args.bot.clone(),
        ttl_seconds: flag_secs("ttl", args.ttl.as_deref())?,
        join_method: args.join_method.clone(),
        ..Default::default()
    };
    if args.join_method != "token" {
        let spec = join_tokens::spec_from_flags(args)?;
        req.name = args.name.clone().ok_or_else(|| {
            crate::error::CliError::usage(format!(
                "--join-method {} needs --name NAME (the agent's onboarding.token refers to it)",
                args.join_method
            ))
        })?;
        req.spec_json = serde_json::to_string(&spec)?;
    } else {
        // Method flags on a plain token are a mistake: say which one.
        join_tokens::spec_from_flags(args)?;
    }
    let mut client = connect(global).await?;
    let resp = client.add_token(req).await?.into_inner();
    if args.join_method != "token" {
        return print_method_token(&resp, args.format.format);
    }
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

/// A method token: its name, what the agent config needs, and a generated
/// registration secret (shown once).
fn print_method_token(
    resp: &sigil_proto::v1::AddTokenResponse,
    format: Format,
) -> anyhow::Result<()> {
    let expires = (resp.expires_unix != 0).then(|| output::unix_time(resp.expires_unix));
    let mut v = json!({
        "bot": resp.bot, "token": resp.token, "join_method": resp.join_method,
        "expires": expires, "ca_pin": resp.ca_pin, "auth_server": resp.auth_server,
    });
    if !resp.registration_secret.is_empty() {
        v["registration_secret"] = json!(resp.registration_secret);
    }
    match format {
        Format::Json => output::out(&output::json(&v)?)?,
        Format::Text => {
            let mut t = format!(
                "Join token {:?} ({}) for bot {:?} created{}.\n\nAgent configuration:\n\n    version: v1\n    auth_server: {}\n    ca_pins: [{}]\n    onboarding: {{join_method: {}, token: {}}}\n",
                resp.token,
                resp.join_method,
                resp.bot,
                expires
                    .map(|e| format!(", expires {e}"))
                    .unwrap_or_default(),
                resp.auth_server,
                resp.ca_pin,
                resp.join_method,
                resp.token
            );
            if !resp.registration_secret.is_empty() {
                t.push_str(&format!(
                    "\nRegistration secret (shown once; put it in onboarding.bound_keypair.registration_secret):\n\n    {}\n",
                    resp.registration_secret
                ));
            }
            output::out(&t)?
        }
    }
    Ok(())
}
