//! `sigil create -f`, `sigil get` and `sigil rm`: the verbs every kind shares.

use super::connect::{AdminClient, connect};
use super::render::kind_table;
use crate::cli::{CreateArgs, Format, GetArgs, GetFormat, GlobalArgs, RmArgs};
use crate::error::CliError;
use crate::output::{self, parse_json_docs, token_prefix};
use anyhow::Context;
use serde_json::Value;
use sigil_proto::v1::{CreateResourceRequest, ListResourcesRequest, ResourceRef};
use std::io::Read;
use std::path::Path;

/// Resource kinds the admin verbs address by name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResourceKind {
    /// `role`
    Role,
    /// `bot`
    Bot,
    /// `token`
    Token,
    /// `lock`
    Lock,
    /// `bot_instance`
    BotInstance,
    /// `workload_identity`
    WorkloadIdentity,
    /// `workload_identity_x509_revocation` (named by certificate serial)
    WorkloadIdentityX509Revocation,
    /// `kubernetes_cluster`
    KubernetesCluster,
    /// `database`
    Database,
    /// `spiffe_federation` (named by the foreign trust domain)
    SpiffeFederation,
    /// `app`
    App,
}

impl ResourceKind {
    /// Every kind, in help order.
    pub const ALL: [ResourceKind; 11] = [
        ResourceKind::Role,
        ResourceKind::Bot,
        ResourceKind::Token,
        ResourceKind::Lock,
        ResourceKind::BotInstance,
        ResourceKind::WorkloadIdentity,
        ResourceKind::WorkloadIdentityX509Revocation,
        ResourceKind::KubernetesCluster,
        ResourceKind::Database,
        ResourceKind::SpiffeFederation,
        ResourceKind::App,
    ];

    /// The singular API name (`ResourceRef.kind`).
    pub fn as_str(self) -> &'static str {
        match self {
            ResourceKind::Role => "role",
            ResourceKind::Bot => "bot",
            ResourceKind::Token => "token",
            ResourceKind::Lock => "lock",
            ResourceKind::BotInstance => "bot_instance",
            ResourceKind::WorkloadIdentity => "workload_identity",
            ResourceKind::WorkloadIdentityX509Revocation => "workload_identity_x509_revocation",
            ResourceKind::KubernetesCluster => "kubernetes_cluster",
            ResourceKind::Database => "database",
            ResourceKind::SpiffeFederation => "spiffe_federation",
            ResourceKind::App => "app",
        }
    }

    /// The plural form (`sigil get workload_identities`).
    pub fn plural(self) -> String {
        match self.as_str().strip_suffix('y') {
            Some(stem) => format!("{stem}ies"),
            None => format!("{}s", self.as_str()),
        }
    }

    /// Parses a kind: singular or plural, any case, `-` or `_` (`bot-instances`);
    /// `revocation(s)` is short for `workload_identity_x509_revocation`.
    pub fn parse(s: &str) -> Result<ResourceKind, CliError> {
        let norm = s.trim().to_ascii_lowercase().replace('-', "_");
        if norm == "revocation" || norm == "revocations" {
            return Ok(ResourceKind::WorkloadIdentityX509Revocation);
        }
        ResourceKind::ALL
            .into_iter()
            .find(|k| k.as_str() == norm || k.plural() == norm)
            .ok_or_else(|| {
                let known: Vec<&str> = ResourceKind::ALL.iter().map(|k| k.as_str()).collect();
                CliError::usage(format!(
                    "unknown resource kind {s:?}: known kinds are {} (plural forms work too; \
                     `revocations` is short for workload_identity_x509_revocations)",
                    known.join(", ")
                ))
            })
    }

    /// The stored form of a name typed by a person: revocations are named by the
    /// serial in normalised hex, so `01:A2:FF` finds `01a2ff`.
    pub fn normalize_name(self, name: &str) -> Result<String, CliError> {
        match self {
            ResourceKind::WorkloadIdentityX509Revocation => {
                super::workload_identity::parse_serial(name)
            }
            _ => Ok(name.to_string()),
        }
    }

    /// How a resource of this kind is named in messages: token names are secrets,
    /// so only their prefix is shown.
    pub fn display_name(self, name: &str) -> String {
        match self {
            ResourceKind::Token => token_prefix(name),
            _ => name.to_string(),
        }
    }
}

/// Splits `KIND`, `KIND/NAME` or `KIND NAME` into a kind and an optional name.
pub fn parse_target(
    target: &str,
    name: Option<&str>,
) -> Result<(ResourceKind, Option<String>), CliError> {
    let (kind, inline) = match target.split_once('/') {
        Some((k, n)) => (k, Some(n)),
        None => (target, None),
    };
    let kind = ResourceKind::parse(kind)?;
    match (inline, name) {
        (Some(_), Some(_)) => Err(CliError::usage(format!(
            "give the name once: either {}/NAME or {} NAME",
            kind.as_str(),
            kind.as_str()
        ))),
        (Some(""), None) => Err(CliError::usage(format!(
            "missing name after {}/",
            kind.as_str()
        ))),
        (Some(n), None) | (None, Some(n)) => Ok((kind, Some(n.to_string()))),
        (None, None) => Ok((kind, None)),
    }
}

/// Reads `-f FILE` (`-` = stdin); returns the text and the name used in errors.
/// Reads at most one byte over the document size limit, so a huge file or an
/// endless pipe is refused without being read whole.
fn read_input(path: &Path) -> anyhow::Result<(String, String)> {
    const MAX: usize = sigil_types::limits::MAX_DOCUMENT_BYTES;
    let (display, reader): (String, Box<dyn Read>) = if path == Path::new("-") {
        ("<stdin>".to_string(), Box::new(std::io::stdin()))
    } else {
        let display = path.display().to_string();
        let f = std::fs::File::open(path)
            .map_err(|e| CliError::usage(format!("cannot read {display}: {e}")))?;
        (display, Box::new(f))
    };
    let mut text = String::new();
    reader
        .take(MAX as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::usage(format!("cannot read {display}: {e}")))?;
    if text.len() > MAX {
        return Err(CliError::usage(format!(
            "{display}: larger than the limit of {MAX} bytes per file; split it into several files"
        ))
        .into());
    }
    Ok((text, display))
}

/// Parses and validates every document locally, so a bad file fails with
/// file:line:field before anything is sent and nothing is changed.
pub fn parse_file_text(
    text: &str,
    display: &str,
) -> Result<Vec<(ResourceKind, String, String)>, CliError> {
    let resources =
        sigil_types::parse_resources(text, display).map_err(|e| CliError::usage(e.to_string()))?;
    if resources.is_empty() {
        return Err(CliError::usage(format!("{display}: no resources found")));
    }
    let mut out = Vec::with_capacity(resources.len());
    for r in &resources {
        let kind = ResourceKind::parse(r.kind())?;
        let shown = kind.display_name(r.name());
        r.validate()
            .map_err(|e| CliError::usage(format!("{display}: {} {shown:?}: {e}", kind.as_str())))?;
        let json = r
            .to_json_value()
            .map_err(|e| CliError::usage(format!("{display}: {} {shown:?}: {e}", kind.as_str())))?
            .to_string();
        out.push((kind, r.name().to_string(), json));
    }
    Ok(out)
}

/// `sigil create -f FILE [--force]`
pub async fn create(global: &GlobalArgs, args: &CreateArgs) -> anyhow::Result<()> {
    let (text, display) = read_input(&args.file)?;
    let docs = parse_file_text(&text, &display)?;
    let mut client = connect(global).await?;
    for (kind, name, json) in docs {
        let shown = kind.display_name(&name);
        // The API does not say whether an upsert replaced something; ask first so
        // the message is accurate.
        let existed = args.force && exists(&mut client, kind, &name).await?;
        client
            .create_resource(CreateResourceRequest {
                json,
                upsert: args.force,
            })
            .await
            .with_context(|| format!("{} {shown:?} not created", kind.as_str()))?;
        let verb = if existed { "updated" } else { "created" };
        output::out(&format!("{} {shown:?} {verb}", kind.as_str()))?;
    }
    Ok(())
}

/// True if the resource exists.
async fn exists(client: &mut AdminClient, kind: ResourceKind, name: &str) -> anyhow::Result<bool> {
    let req = ResourceRef {
        kind: kind.as_str().to_string(),
        name: name.to_string(),
    };
    match client.get_resource(req).await {
        Ok(_) => Ok(true),
        Err(s) if s.code() == tonic::Code::NotFound => Ok(false),
        Err(s) => Err(s.into()),
    }
}

/// Lists resources of `kind` (with an optional filter) as JSON values.
pub async fn list(
    client: &mut AdminClient,
    kind: ResourceKind,
    filter: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    let mut page_token = String::new();
    // The server pages every list; read them all.
    loop {
        let resp = client
            .list_resources(ListResourcesRequest {
                kind: kind.as_str().to_string(),
                filter: filter.to_string(),
                limit: 0,
                page_token,
            })
            .await?
            .into_inner();
        out.extend(parse_json_docs(&resp.json)?);
        if resp.next_page_token.is_empty() {
            return Ok(out);
        }
        page_token = resp.next_page_token;
    }
}

/// Up to `limit` resources of `kind` from `page_token` on (`""`: the start),
/// and the token that continues after them (`""`: nothing left).
pub async fn list_some(
    client: &mut AdminClient,
    kind: ResourceKind,
    filter: &str,
    limit: u32,
    page_token: &str,
) -> anyhow::Result<(Vec<Value>, String)> {
    let mut out = Vec::new();
    let mut page_token = page_token.to_string();
    while (out.len() as u64) < u64::from(limit) {
        let resp = client
            .list_resources(ListResourcesRequest {
                kind: kind.as_str().to_string(),
                filter: filter.to_string(),
                limit: limit.saturating_sub(out.len() as u32),
                page_token,
            })
            .await?
            .into_inner();
        out.extend(parse_json_docs(&resp.json)?);
        page_token = resp.next_page_token;
        if page_token.is_empty() {
            break;
        }
    }
    Ok((out, page_token))
}

/// Prints a list for `ls` verbs: a table, or a JSON array.
pub fn print_list(kind: ResourceKind, items: &[Value], format: Format) -> anyhow::Result<()> {
    match format {
        Format::Text if items.is_empty() => eprintln!("no {}", kind.plural()),
        Format::Text => output::out(&kind_table(kind, items))?,
        Format::Json => output::out(&output::json(&Value::Array(items.to_vec()))?)?,
    }
    Ok(())
}

/// `sigil get KIND[/NAME]`
pub async fn get(global: &GlobalArgs, args: &GetArgs) -> anyhow::Result<()> {
    let (kind, name) = parse_target(&args.target, args.name.as_deref())?;
    let name = name.map(|n| kind.normalize_name(&n)).transpose()?;
    let mut client = connect(global).await?;
    match name {
        Some(name) => {
            let req = ResourceRef {
                kind: kind.as_str().to_string(),
                name: name.clone(),
            };
            let resp = client.get_resource(req).await?.into_inner();
            let value = parse_json_docs(&[resp.json])?.remove(0);
            match args.output.unwrap_or(GetFormat::Yaml) {
                GetFormat::Yaml => output::out(&output::yaml_docs(std::slice::from_ref(&value))?)?,
                GetFormat::Json => output::out(&output::json(&value)?)?,
                GetFormat::Text => output::out(&kind_table(kind, std::slice::from_ref(&value)))?,
            }
        }
        // The clusters the caller may reach, with its users and groups
        // (`sigil kube ls`); YAML stays the resources, for `create -f`.
        None if kind == ResourceKind::KubernetesCluster && args.output != Some(GetFormat::Yaml) => {
            let format = match args.output {
                Some(GetFormat::Json) => Format::Json,
                _ => Format::Text,
            };
            super::kube::print_access(&mut client, format).await?;
        }
        None => {
            let items = list(&mut client, kind, "").await?;
            match args.output.unwrap_or(GetFormat::Text) {
                GetFormat::Yaml => output::out(&output::yaml_docs(&items)?)?,
                GetFormat::Json => print_list(kind, &items, Format::Json)?,
                GetFormat::Text => print_list(kind, &items, Format::Text)?,
            }
        }
    }
    Ok(())
}

/// `sigil rm KIND/NAME`
pub async fn rm(global: &GlobalArgs, args: &RmArgs) -> anyhow::Result<()> {
    let (kind, name) = parse_target(&args.target, args.name.as_deref())?;
    let name = name.ok_or_else(|| {
        CliError::usage(format!("which {0}? use `sigil rm {0}/NAME`", kind.as_str()))
    })?;
    let name = kind.normalize_name(&name)?;
    delete(global, kind, &name).await
}

/// Deletes one resource and says so.
pub async fn delete(global: &GlobalArgs, kind: ResourceKind, name: &str) -> anyhow::Result<()> {
    let mut client = connect(global).await?;
    let req = ResourceRef {
        kind: kind.as_str().to_string(),
        name: name.to_string(),
    };
    client.delete_resource(req).await?;
    output::out(&format!(
        "{} {:?} removed",
        kind.as_str(),
        kind.display_name(name)
    ))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Failure;

    #[test]
    fn kinds_normalise() {
        let cases = [
            ("role", ResourceKind::Role),
            ("roles", ResourceKind::Role),
            ("Roles", ResourceKind::Role),
            ("bot", ResourceKind::Bot),
            ("bots", ResourceKind::Bot),
            ("token", ResourceKind::Token),
            ("tokens", ResourceKind::Token),
            ("lock", ResourceKind::Lock),
            ("locks", ResourceKind::Lock),
            ("bot_instance", ResourceKind::BotInstance),
            ("bot_instances", ResourceKind::BotInstance),
            ("bot-instances", ResourceKind::BotInstance),
            ("bot-instance", ResourceKind::BotInstance),
            ("workload_identity", ResourceKind::WorkloadIdentity),
            ("workload_identities", ResourceKind::WorkloadIdentity),
            ("workload-identities", ResourceKind::WorkloadIdentity),
            ("Workload_Identities", ResourceKind::WorkloadIdentity),
            (
                "workload_identity_x509_revocation",
                ResourceKind::WorkloadIdentityX509Revocation,
            ),
            (
                "workload_identity_x509_revocations",
                ResourceKind::WorkloadIdentityX509Revocation,
            ),
            ("revocations", ResourceKind::WorkloadIdentityX509Revocation),
            ("revocation", ResourceKind::WorkloadIdentityX509Revocation),
        ];
        for (s, want) in cases {
            assert_eq!(ResourceKind::parse(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn unknown_kind_lists_known_ones() {
        let err = ResourceKind::parse("robots").unwrap_err();
        assert_eq!(err.failure, Failure::Usage);
        for k in [
            "role",
            "bot",
            "token",
            "lock",
            "bot_instance",
            "workload_identity",
            "workload_identity_x509_revocation",
        ] {
            assert!(err.message.contains(k), "{}", err.message);
        }
        assert!(ResourceKind::parse("s").is_err());
        assert!(ResourceKind::parse("").is_err());
        // Only the real plural: `workload_identitys` is not a kind.
        assert!(ResourceKind::parse("workload_identitys").is_err());
        assert!(ResourceKind::parse("workload_identitie").is_err());
    }

    #[test]
    fn plurals_and_api_names() {
        let want = [
            (ResourceKind::Role, "role", "roles"),
            (ResourceKind::BotInstance, "bot_instance", "bot_instances"),
            (
                ResourceKind::WorkloadIdentity,
                "workload_identity",
                "workload_identities",
            ),
            (
                ResourceKind::WorkloadIdentityX509Revocation,
                "workload_identity_x509_revocation",
                "workload_identity_x509_revocations",
            ),
        ];
        for (kind, singular, plural) in want {
            assert_eq!((kind.as_str(), kind.plural().as_str()), (singular, plural));
        }
        // Every kind parses back from both of its forms.
        for kind in ResourceKind::ALL {
            assert_eq!(ResourceKind::parse(kind.as_str()), Ok(kind));
            assert_eq!(ResourceKind::parse(&kind.plural()), Ok(kind));
        }
    }

    #[test]
    fn revocation_names_are_normalised_serials() {
        let (kind, name) = parse_target("revocation/01:A2:FF", None).unwrap();
        assert_eq!(kind, ResourceKind::WorkloadIdentityX509Revocation);
        assert_eq!(kind.normalize_name(&name.unwrap()), Ok("01a2ff".into()));
        assert_eq!(kind.normalize_name("0x00001F"), Ok("1f".into()));
        assert_eq!(
            kind.normalize_name("zz").unwrap_err().failure,
            Failure::Usage
        );
        // Other kinds keep names as typed.
        assert_eq!(
            ResourceKind::WorkloadIdentity.normalize_name("Payments"),
            Ok("Payments".into())
        );
    }

    #[test]
    fn targets_split() {
        assert_eq!(parse_target("roles", None), Ok((ResourceKind::Role, None)));
        assert_eq!(
            parse_target("role/dev", None),
            Ok((ResourceKind::Role, Some("dev".into())))
        );
        assert_eq!(
            parse_target("bot", Some("ci")),
            Ok((ResourceKind::Bot, Some("ci".into())))
        );
        assert!(parse_target("role/dev", Some("x")).is_err());
        assert!(parse_target("role/", None).is_err());
        assert_eq!(
            parse_target("widget/x", None).unwrap_err().failure,
            Failure::Usage
        );
    }

    #[test]
    fn token_names_are_masked_in_messages() {
        assert_eq!(
            ResourceKind::Token.display_name("0123456789abcdef"),
            "01234567…"
        );
        assert_eq!(
            ResourceKind::Role.display_name("0123456789abcdef"),
            "0123456789abcdef"
        );
    }

    #[test]
    fn bad_yaml_fails_locally_with_location() {
        let text = "kind: role\nversion: v1\nmetadata:\n  name: dev\nspec:\n  allow:\n    loginz: [root]\n";
        let err = parse_file_text(text, "role.yaml").unwrap_err();
        assert_eq!(err.failure, Failure::Usage);
        assert!(err.message.starts_with("role.yaml:"), "{}", err.message);
        assert!(err.message.contains("loginz"), "{}", err.message);
    }

    #[test]
    fn good_documents_become_json() {
        let text = "kind: role\nversion: v1\nmetadata:\n  name: dev\nspec:\n  allow:\n    logins: [root]\n---\n\
                    kind: bot\nversion: v1\nmetadata:\n  name: ci\nspec:\n  roles: [dev]\n";
        let docs = parse_file_text(text, "f.yaml").unwrap();
        assert_eq!(docs.len(), 2);
        assert_eq!((docs[0].0, docs[0].1.as_str()), (ResourceKind::Role, "dev"));
        assert_eq!((docs[1].0, docs[1].1.as_str()), (ResourceKind::Bot, "ci"));
        let v: Value = serde_json::from_str(&docs[1].2).unwrap();
        assert_eq!(v["spec"]["roles"][0], "dev");
    }

    #[test]
    fn workload_identity_documents_are_accepted() {
        let text = "kind: workload_identity\nversion: v1\nmetadata: {name: payments}\n\
                    spec:\n  spiffe:\n    id: /svc/payments/{{ workload.unix.uid }}\n---\n\
                    kind: workload_identity_x509_revocation\nversion: v1\nmetadata: {name: 1f3a}\n\
                    spec: {reason: key leaked, revoked_at: \"2030-01-01T00:00:00Z\"}\n";
        let docs = parse_file_text(text, "wi.yaml").unwrap();
        assert_eq!(
            (docs[0].0, docs[0].1.as_str()),
            (ResourceKind::WorkloadIdentity, "payments")
        );
        assert_eq!(
            (docs[1].0, docs[1].1.as_str()),
            (ResourceKind::WorkloadIdentityX509Revocation, "1f3a")
        );
    }
}
