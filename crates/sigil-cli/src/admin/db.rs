//! `sigil db ls`: the databases the caller may reach, with the users and
//! database names its roles give (a bot with `--identity`), or every
//! database (the local admin).

use clap::Subcommand;
use serde_json::{Value, json};
use sigil_proto::v1::{ListDatabaseAccessRequest, ListDatabaseAccessResponse};

use super::connect::connect;
use crate::cli::{Format, FormatArg, GlobalArgs};
use crate::output::{self, table};

/// `sigil db ...`
#[derive(Subcommand, Debug)]
pub enum DbCommand {
    /// List the databases the caller may reach (users and names from its roles).
    Ls(DbLsArgs),
}

/// `sigil db ls`
#[derive(clap::Args, Debug)]
pub struct DbLsArgs {
    #[command(flatten)]
    pub format: FormatArg,
}

pub async fn run(global: &GlobalArgs, cmd: &DbCommand) -> anyhow::Result<()> {
    match cmd {
        DbCommand::Ls(args) => {
            let mut client = connect(global).await?;
            let resp = client
                .list_database_access(ListDatabaseAccessRequest {})
                .await?
                .into_inner();
            match args.format.format {
                Format::Json => output::out(&output::json(&to_json(&resp))?)?,
                Format::Text => output::out(&text(&resp))?,
            }
            Ok(())
        }
    }
}

fn to_json(r: &ListDatabaseAccessResponse) -> Value {
    let dbs: Vec<Value> = r
        .databases
        .iter()
        .map(|d| {
            json!({
                "name": d.name, "protocol": d.protocol, "uri": d.uri,
                "labels": d.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
                "users": d.users, "names": d.names,
                "denied_users": d.denied_users, "denied_names": d.denied_names,
                "server": d.server,
            })
        })
        .collect();
    json!({"all": r.all, "databases": dbs})
}

fn join_or(list: &[String], empty: &str) -> String {
    if list.is_empty() {
        empty.to_string()
    } else {
        list.join(",")
    }
}

/// NAME, PROTOCOL, URI, USERS, DATABASES (denied ones as `!x`), SERVER.
fn text(r: &ListDatabaseAccessResponse) -> String {
    let any = if r.all { "(any)" } else { "-" };
    let rows = r
        .databases
        .iter()
        .map(|d| {
            let with_denied = |allow: &[String], deny: &[String]| {
                let mut v = vec![join_or(allow, any)];
                if !deny.is_empty() {
                    v.push(
                        deny.iter()
                            .map(|x| format!("!{x}"))
                            .collect::<Vec<_>>()
                            .join(","),
                    );
                }
                v.join(" ")
            };
            vec![
                d.name.clone(),
                d.protocol.clone(),
                d.uri.clone(),
                with_denied(&d.users, &d.denied_users),
                with_denied(&d.names, &d.denied_names),
                if d.server { "yes".into() } else { "-".into() },
            ]
        })
        .collect();
    table(
        &["NAME", "PROTOCOL", "URI", "USERS", "DATABASES", "SERVER"],
        rows,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_proto::v1::DatabaseAccess;

    #[test]
    fn table_shows_grants_and_denies() {
        let r = ListDatabaseAccessResponse {
            databases: vec![DatabaseAccess {
                name: "orders".into(),
                protocol: "postgres".into(),
                uri: "127.0.0.1:5432".into(),
                users: vec!["app_ro".into(), "app_*".into()],
                names: vec!["orders".into()],
                denied_users: vec!["app_admin".into()],
                ..Default::default()
            }],
            all: false,
        };
        let t = text(&r);
        assert!(t.contains("app_ro,app_* !app_admin"), "{t}");
        assert!(t.contains("orders") && t.contains("postgres"), "{t}");
        let j = to_json(&r);
        assert_eq!(j["databases"][0]["denied_users"][0], "app_admin");
        let all = text(&ListDatabaseAccessResponse {
            databases: vec![DatabaseAccess {
                name: "orders".into(),
                ..Default::default()
            }],
            all: true,
        });
        assert!(all.contains("(any)"), "{all}");
    }
}
