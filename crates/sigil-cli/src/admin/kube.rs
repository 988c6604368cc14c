//! `sigil kube ls`: the kubernetes_clusters the caller may reach, with the
//! Kubernetes user(s) and groups its roles give there. A bot asks with its
//! identity file (`--identity`); the local admin sees every cluster (users
//! and groups depend on each bot's roles, so none are shown).

use clap::Subcommand;
use serde_json::json;
use sigil_proto::v1::{ListKubernetesAccessRequest, ListKubernetesAccessResponse};

use super::connect::{AdminClient, connect};
use crate::cli::{Format, FormatArg, GlobalArgs};
use crate::output::{self, table};

/// `sigil kube ...`
#[derive(Subcommand, Debug)]
pub enum KubeCommand {
    /// List the Kubernetes clusters you may reach, with the users and groups
    /// your certificate would carry (the `kubernetes` output writes them).
    Ls(FormatArg),
}

/// Run `sigil kube ...`.
pub async fn run(global: &GlobalArgs, cmd: &KubeCommand) -> anyhow::Result<()> {
    match cmd {
        KubeCommand::Ls(f) => {
            let mut client = connect(global).await?;
            print_access(&mut client, f.format).await
        }
    }
}

/// Ask the auth service and print the answer as `format` says.
pub async fn print_access(client: &mut AdminClient, format: Format) -> anyhow::Result<()> {
    let resp = client
        .list_kubernetes_access(ListKubernetesAccessRequest {})
        .await?
        .into_inner();
    match format {
        Format::Json => output::out(&output::json(&access_json(&resp))?)?,
        Format::Text if resp.clusters.is_empty() => {
            eprintln!("no kubernetes clusters you may reach");
        }
        Format::Text => {
            output::out(&access_table(&resp))?;
            if resp.all_clusters {
                eprintln!(
                    "(the local admin sees every cluster; users and groups depend on each bot's roles)"
                );
            }
        }
    }
    Ok(())
}

fn joined(v: &[String]) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// NAME, SERVER, LABELS, USERS, GROUPS.
pub fn access_table(resp: &ListKubernetesAccessResponse) -> String {
    let rows = resp
        .clusters
        .iter()
        .map(|c| {
            let mut labels: Vec<String> =
                c.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            labels.sort();
            vec![
                c.name.clone(),
                c.server.clone(),
                joined(&labels),
                joined(&c.users),
                joined(&c.groups),
            ]
        })
        .collect();
    table(&["NAME", "SERVER", "LABELS", "USERS", "GROUPS"], rows)
}

fn access_json(resp: &ListKubernetesAccessResponse) -> serde_json::Value {
    serde_json::Value::Array(
        resp.clusters
            .iter()
            .map(|c| {
                json!({
                    "name": c.name, "server": c.server,
                    "labels": c.labels.iter().collect::<std::collections::BTreeMap<_, _>>(),
                    "users": c.users, "groups": c.groups,
                })
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_proto::v1::KubernetesClusterAccess;

    #[test]
    fn table_and_json_show_users_and_groups() {
        let resp = ListKubernetesAccessResponse {
            clusters: vec![KubernetesClusterAccess {
                name: "prod".into(),
                server: "https://10.0.0.1:6443".into(),
                labels: [("env".to_string(), "prod".to_string())].into(),
                users: vec!["ci".into()],
                groups: vec!["deployers".into(), "viewers".into()],
            }],
            all_clusters: false,
        };
        let t = access_table(&resp);
        assert!(t.starts_with("NAME"), "{t}");
        assert!(
            t.contains("prod") && t.contains("env=prod") && t.contains("deployers,viewers"),
            "{t}"
        );
        let j = access_json(&resp);
        assert_eq!(j[0]["users"][0], "ci");
        assert_eq!(j[0]["labels"]["env"], "prod");
    }
}
