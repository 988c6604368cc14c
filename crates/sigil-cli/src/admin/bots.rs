//! `sigil bots add|ls|rm|update|instances ls`.

use super::connect::connect;
use super::resources::{ResourceKind, delete, list, list_some, print_list};
use super::{check_name_arg, flag_secs};
use crate::cli::{BotsAddArgs, BotsCommand, BotsUpdateArgs, Format, GlobalArgs, InstancesCommand};
use crate::output::{self, relative, unix_time};
use serde_json::{Value, json};
use sigil_proto::v1::{AddBotRequest, UpdateBotRequest};

/// Runs a `sigil bots` subcommand.
pub async fn run(global: &GlobalArgs, cmd: &BotsCommand) -> anyhow::Result<()> {
    match cmd {
        BotsCommand::Add(args) => add(global, args).await,
        BotsCommand::Ls(f) => {
            let mut client = connect(global).await?;
            let items = list(&mut client, ResourceKind::Bot, "").await?;
            print_list(ResourceKind::Bot, &items, f.format)
        }
        BotsCommand::Rm(n) => delete(global, ResourceKind::Bot, &n.name).await,
        BotsCommand::Update(args) => update(global, args).await,
        BotsCommand::Instances(InstancesCommand::Ls(args)) => {
            let mut client = connect(global).await?;
            let filter = args.bot.as_deref().unwrap_or("");
            if args.limit.is_none() && args.page_token.is_none() {
                let items = list(&mut client, ResourceKind::BotInstance, filter).await?;
                return print_list(ResourceKind::BotInstance, &items, args.format.format);
            }
            let (items, next) = list_some(
                &mut client,
                ResourceKind::BotInstance,
                filter,
                args.limit.unwrap_or(u32::MAX),
                args.page_token.as_deref().unwrap_or(""),
            )
            .await?;
            print_list(ResourceKind::BotInstance, &items, args.format.format)?;
            if !next.is_empty() {
                let bot = args
                    .bot
                    .as_deref()
                    .map(|b| format!(" {b}"))
                    .unwrap_or_default();
                let limit = args
                    .limit
                    .map(|l| format!(" --limit {l}"))
                    .unwrap_or_default();
                eprintln!("more: sigil bots instances ls{bot}{limit} --page-token {next}");
            }
            Ok(())
        }
    }
}

/// What `bots add` and `tokens add` hand to the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinInfo {
    /// Bot name.
    pub bot: String,
    /// The join token (secret).
    pub token: String,
    /// Token expiry (Unix seconds).
    pub expires_unix: i64,
    /// `sha256:HEX` pin of the host CA.
    pub ca_pin: String,
    /// Address agents should join (may be empty if the server does not know it).
    pub auth_server: String,
}

impl JoinInfo {
    /// The fixed JSON shape: `{"bot","token","expires","ca_pin","auth_server"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "bot": self.bot,
            "token": self.token,
            "expires": unix_time(self.expires_unix),
            "ca_pin": self.ca_pin,
            "auth_server": self.auth_server,
        })
    }

    /// The exact command that joins with this token (one line per flag).
    /// It reads the token from a file: an argument would be visible to every
    /// user in `ps`. The paths are the README Quickstart's.
    pub fn agent_command(&self) -> String {
        let server = if self.auth_server.is_empty() {
            "HOST:PORT"
        } else {
            &self.auth_server
        };
        [
            "sigil agent start".to_string(),
            format!("    --auth-server {server}"),
            format!("    --ca-pin {}", self.ca_pin),
            format!("    --token-path {QUICKSTART_TOKEN_PATH}"),
            "    --storage /var/lib/sigil-agent".to_string(),
            "    --output identity:/opt/machine-id".to_string(),
        ]
        .join(" \\\n")
    }

    /// The friendly text shown after creating a bot or token.
    pub fn text(&self, headline: &str) -> String {
        format!(
            "{headline}\n\nThe join token below can be used once and expires at {} ({}):\n\n    {}\n\n\
             On the machine that should get the identity, save it in a file only you can read \
             (paste it, then Enter and Ctrl-D):\n\n    \
             mkdir -p -m 0700 {QUICKSTART_TOKEN_DIR}\n    \
             (umask 077; cat > {QUICKSTART_TOKEN_PATH})\n\n\
             then start the agent (the directories are examples; adjust them):\n\n    {}\n",
            unix_time(self.expires_unix),
            relative(self.expires_unix),
            self.token,
            self.agent_command().replace('\n', "\n    ")
        )
    }
}

/// Where the printed agent command (and the README Quickstart) keep the join token.
const QUICKSTART_TOKEN_DIR: &str = "/run/secrets";
const QUICKSTART_TOKEN_PATH: &str = "/run/secrets/sigil-token";

/// Prints join info in the requested format.
pub fn print_join_info(info: &JoinInfo, headline: &str, format: Format) -> anyhow::Result<()> {
    match format {
        Format::Json => output::out(&output::json(&info.to_json())?)?,
        Format::Text => output::out(&info.text(headline))?,
    }
    Ok(())
}

async fn add(global: &GlobalArgs, args: &BotsAddArgs) -> anyhow::Result<()> {
    check_name_arg("bot", "bot name", &args.name)?;
    for r in &args.roles {
        check_name_arg("role", "--roles", r)?;
    }
    let req = AddBotRequest {
        name: args.name.clone(),
        roles: args.roles.clone(),
        token_ttl_seconds: flag_secs("token-ttl", args.token_ttl.as_deref())?,
        max_ttl_seconds: flag_secs("max-ttl", args.max_ttl.as_deref())?,
    };
    let mut client = connect(global).await?;
    let resp = client.add_bot(req).await?.into_inner();
    let info = JoinInfo {
        bot: args.name.clone(),
        token: resp.token,
        expires_unix: resp.expires_unix,
        ca_pin: resp.ca_pin,
        auth_server: fallback_server(resp.auth_server, global),
    };
    let headline = format!(
        "Bot {:?} created with roles: {}.",
        args.name,
        args.roles.join(", ")
    );
    print_join_info(&info, &headline, args.format.format)
}

/// The server's advertised address, else the one the CLI was pointed at.
pub fn fallback_server(from_server: String, global: &GlobalArgs) -> String {
    if from_server.is_empty() {
        global.auth_server.clone().unwrap_or_default()
    } else {
        from_server
    }
}

async fn update(global: &GlobalArgs, args: &BotsUpdateArgs) -> anyhow::Result<()> {
    check_name_arg("bot", "bot name", &args.name)?;
    for r in &args.set_roles {
        check_name_arg("role", "--set-roles", r)?;
    }
    let mut client = connect(global).await?;
    let req = UpdateBotRequest {
        name: args.name.clone(),
        set_roles: args.set_roles.clone(),
    };
    let resp = client.update_bot(req).await?.into_inner();
    match args.format.format {
        Format::Json => {
            let v: Value = serde_json::from_str(&resp.json)?;
            output::out(&output::json(&v)?)?;
        }
        Format::Text => output::out(&format!(
            "bot {:?} updated: roles {}",
            args.name,
            args.set_roles.join(", ")
        ))?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> JoinInfo {
        JoinInfo {
            bot: "ci".into(),
            token: "tok-secret-123".into(),
            expires_unix: 1_714_564_800,
            ca_pin: "sha256:abcd".into(),
            auth_server: "auth.example.test:3025".into(),
        }
    }

    #[test]
    fn json_shape_is_fixed() {
        let v = info().to_json();
        let obj = v.as_object().unwrap();
        let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["auth_server", "bot", "ca_pin", "expires", "token"]);
        assert_eq!(v["expires"], "2024-05-01T12:00:00Z");
        assert_eq!(v["token"], "tok-secret-123");
    }

    #[test]
    fn text_has_token_expiry_and_command() {
        let t = info().text("Bot \"ci\" created.");
        assert!(t.contains("tok-secret-123"), "{t}");
        assert!(t.contains("2024-05-01T12:00:00Z"), "{t}");
        assert!(t.contains("sigil agent start"), "{t}");
        assert!(t.contains("--auth-server auth.example.test:3025"), "{t}");
        assert!(t.contains("--ca-pin sha256:abcd"), "{t}");
        // The token is shown once, on its own line, and never as an argument
        // (`ps` shows arguments to every user).
        assert_eq!(t.matches("tok-secret-123").count(), 1, "{t}");
        assert!(!t.contains("--token "), "{t}");
        assert!(t.contains("--token-path /run/secrets/sigil-token"), "{t}");
        assert!(t.contains("cat > /run/secrets/sigil-token"), "{t}");
        assert!(t.contains("--storage /var/lib/sigil-agent"), "{t}");
        assert!(t.contains("--output identity:/opt/machine-id"), "{t}");
    }

    #[test]
    fn server_address_falls_back_to_the_flag() {
        let g = GlobalArgs {
            auth_server: Some("h:1".into()),
            ..Default::default()
        };
        assert_eq!(fallback_server(String::new(), &g), "h:1");
        assert_eq!(fallback_server("s:2".into(), &g), "s:2");
    }
}
