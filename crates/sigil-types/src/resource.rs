//! The common resource envelope `{kind, version, metadata, spec}`, the `Kind`
//! trait each spec implements, name validation and `AnyResource`.

use crate::bot::BotSpec;
use crate::bot_instance::BotInstanceSpec;
pub use crate::kubernetes_cluster::KubernetesCluster;
use crate::kubernetes_cluster::KubernetesClusterSpec;
use crate::lock::LockSpec;
use crate::revocation::WorkloadIdentityX509RevocationSpec;
use crate::role::RoleSpec;
use crate::token::TokenSpec;
use crate::workload_identity::WorkloadIdentitySpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

use crate::text::{escape_unsafe, is_unsafe_char};

/// The only resource version currently defined.
pub const RESOURCE_VERSION: &str = "v1";

/// Maximum length of a resource name.
pub const MAX_NAME_LEN: usize = 253;

/// A resource failed semantic validation. `field` is a dotted path such as
/// `metadata.name` or `spec.allow.logins[2]`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Dotted path of the offending field.
    pub field: String,
    /// What is wrong and how to fix it. Never contains secrets.
    pub message: String,
}

impl ValidationError {
    /// Builds a validation error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        ValidationError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Resource metadata common to every kind.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    /// Unique name within the kind (for `token`, the secret itself).
    pub name: String,
    /// Free-form labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// When the resource stops existing (RFC 3339).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub expires: Option<OffsetDateTime>,
    /// Human description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl Metadata {
    /// Metadata with only a name.
    pub fn named(name: impl Into<String>) -> Self {
        Metadata {
            name: name.into(),
            ..Default::default()
        }
    }

    /// True if `expires` is set and not after `now`.
    pub fn is_expired(&self, now: OffsetDateTime) -> bool {
        self.expires.is_some_and(|e| e <= now)
    }
}

/// The envelope every resource shares.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Resource<S> {
    /// Resource kind, e.g. `role`; equals `S::KIND`.
    pub kind: String,
    /// Always `v1` for now.
    pub version: String,
    /// Name, labels, expiry.
    pub metadata: Metadata,
    /// Kind-specific body.
    pub spec: S,
}

/// A resource spec type: its kind name and its semantic validation.
pub trait Kind {
    /// Kind name as written in `kind:`.
    const KIND: &'static str;
    /// Checks the whole resource (envelope and spec).
    fn validate(res: &Resource<Self>) -> Result<(), ValidationError>
    where
        Self: Sized;
}

impl<S: Kind> Resource<S> {
    /// Builds a resource with `kind` and `version` filled in.
    pub fn new(metadata: Metadata, spec: S) -> Self {
        Resource {
            kind: S::KIND.to_string(),
            version: RESOURCE_VERSION.to_string(),
            metadata,
            spec,
        }
    }

    /// Runs `S::validate` on this resource.
    pub fn validate(&self) -> Result<(), ValidationError> {
        S::validate(self)
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

/// Maximum length of a label key.
pub const MAX_LABEL_KEY_LEN: usize = 253;
/// Maximum length of a label value.
pub const MAX_LABEL_VALUE_LEN: usize = 253;
/// Maximum length of `metadata.description`.
pub const MAX_DESCRIPTION_LEN: usize = 4096;

/// Checks the envelope: `kind` matches, `version` is `v1`, name, labels and
/// description are valid. Every `Kind::validate` calls this first.
pub fn validate_envelope<S: Kind>(res: &Resource<S>) -> Result<(), ValidationError> {
    if res.kind != S::KIND {
        return Err(ValidationError::new(
            "kind",
            format!("expected {:?}, got {:?}", S::KIND, res.kind),
        ));
    }
    if res.version != RESOURCE_VERSION {
        return Err(ValidationError::new(
            "version",
            format!(
                "unsupported version {:?}: only {RESOURCE_VERSION:?} is supported",
                res.version
            ),
        ));
    }
    validate_name(S::KIND, &res.metadata.name)?;
    for (k, v) in &res.metadata.labels {
        check_label_key(k).map_err(|m| ValidationError::new("metadata.labels", m))?;
        check_label_value(v).map_err(|m| {
            ValidationError::new(format!("metadata.labels.{}", escape_unsafe(k)), m)
        })?;
    }
    if let Some(d) = &res.metadata.description {
        crate::text::check_free_text(d, MAX_DESCRIPTION_LEN, true)
            .map_err(|m| ValidationError::new("metadata.description", m))?;
    }
    Ok(())
}

/// Checks a resource name in a resource (`metadata.name`); see [`check_name`].
pub fn validate_name(kind: &str, name: &str) -> Result<(), ValidationError> {
    check_name(kind, name).map_err(|e| ValidationError::new("metadata.name", e.message))
}

/// The one rule for resource names, on every path (files, `create`, `bots
/// add NAME`, `rm KIND NAME`, references such as `spec.roles[0]` and lock
/// targets): 1..=253 characters of `[A-Za-z0-9._@-]`, starting with a letter
/// or digit, without `..`. Names become store keys, file names and table
/// cells, so nothing that could be a path, a control or an escape sequence
/// gets in. Token names are secrets, so errors never echo them. The error's
/// field is `name`; resources report it as `metadata.name`.
pub fn check_name(kind: &str, name: &str) -> Result<(), ValidationError> {
    let field = "name";
    let shown = if kind == "token" {
        "<redacted>".to_string()
    } else {
        format!("\"{}\"", escape_unsafe(name))
    };
    if name.is_empty() {
        return Err(ValidationError::new(
            field,
            format!("{kind} name must not be empty"),
        ));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Err(ValidationError::new(
            field,
            format!("{kind} name is longer than {MAX_NAME_LEN} characters"),
        ));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return Err(ValidationError::new(
            field,
            format!("{kind} name {shown} must start with a letter or digit"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        let what = if kind == "token" || is_unsafe_char(c) {
            "a character".to_string()
        } else {
            format!("character {c:?}")
        };
        return Err(ValidationError::new(
            field,
            format!("{kind} name {shown} contains {what} outside [A-Za-z0-9._@-]"),
        ));
    }
    if name.contains("..") {
        return Err(ValidationError::new(
            field,
            format!("{kind} name {shown} must not contain \"..\""),
        ));
    }
    Ok(())
}

/// Checks a label key (resource labels and role label selectors):
/// 1..=253 characters of `[A-Za-z0-9._/-]`, starting with a letter or digit
/// (e.g. `env`, `example.com/team`).
pub fn check_label_key(key: &str) -> Result<(), String> {
    let shown = escape_unsafe(key);
    if key.is_empty() {
        return Err("label name must not be empty".into());
    }
    if key.chars().count() > MAX_LABEL_KEY_LEN {
        return Err(format!(
            "label name \"{shown}\" is longer than {MAX_LABEL_KEY_LEN} characters"
        ));
    }
    if !key.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '/' | '-'))
    {
        return Err(format!(
            "label name \"{shown}\" must be letters, digits and . _ / -, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a label value (or a label glob in a role): at most 253
/// characters, no control or invisible formatting characters.
pub fn check_label_value(value: &str) -> Result<(), String> {
    crate::text::check_free_text(value, MAX_LABEL_VALUE_LEN, false)
        .map_err(|m| format!("label value {m}"))
}

/// Checks a reference to another resource by name (e.g. `spec.roles[0]`).
pub(crate) fn validate_ref(field: &str, kind: &str, name: &str) -> Result<(), ValidationError> {
    validate_name(kind, name).map_err(|e| ValidationError::new(field, e.message))
}

/// Resource type aliases.
pub type Role = Resource<RoleSpec>;
/// A machine user.
pub type Bot = Resource<BotSpec>;
/// A join token (its name is the secret).
pub type Token = Resource<TokenSpec>;
/// A lock cutting off a target.
pub type Lock = Resource<LockSpec>;
/// One agent installation (server-written).
pub type BotInstance = Resource<BotInstanceSpec>;
/// A SPIFFE workload identity template with its rules.
pub type WorkloadIdentity = Resource<WorkloadIdentitySpec>;
/// A revoked X.509-SVID, named by its serial (lowercase hex).
pub type WorkloadIdentityX509Revocation = Resource<WorkloadIdentityX509RevocationSpec>;
/// A database Sigil issues client certificates for.
pub type Database = Resource<crate::database::DatabaseSpec>;
/// An HTTP app reached through `sigil proxy`.
pub type App = Resource<crate::app::AppSpec>;

/// Kind names `parse_resources` understands.
pub const KNOWN_KINDS: &[&str] = &[
    RoleSpec::KIND,
    BotSpec::KIND,
    TokenSpec::KIND,
    LockSpec::KIND,
    BotInstanceSpec::KIND,
    WorkloadIdentitySpec::KIND,
    WorkloadIdentityX509RevocationSpec::KIND,
    KubernetesClusterSpec::KIND,
    crate::database::DatabaseSpec::KIND,
    crate::spiffe_federation::SpiffeFederationSpec::KIND,
    crate::app::AppSpec::KIND,
];

/// Any resource, for code that handles several kinds (`sigil create -f`).
// A role is the largest kind; resources are handled one at a time (admin
// calls), so boxing it would buy nothing but a change to every match.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum AnyResource {
    /// A role.
    Role(Role),
    /// A bot.
    Bot(Bot),
    /// A join token.
    Token(Token),
    /// A lock.
    Lock(Lock),
    /// A bot instance.
    BotInstance(BotInstance),
    /// A workload identity.
    WorkloadIdentity(WorkloadIdentity),
    /// A revoked workload identity X.509-SVID.
    WorkloadIdentityX509Revocation(WorkloadIdentityX509Revocation),
    /// A Kubernetes cluster.
    KubernetesCluster(KubernetesCluster),
    /// A database.
    Database(Database),
    /// A federation with a foreign SPIFFE trust domain.
    SpiffeFederation(crate::spiffe_federation::SpiffeFederation),
    /// An app behind `sigil proxy`.
    App(App),
}

impl AnyResource {
    /// The kind name, e.g. `role`.
    pub fn kind(&self) -> &'static str {
        match self {
            AnyResource::Role(_) => RoleSpec::KIND,
            AnyResource::Bot(_) => BotSpec::KIND,
            AnyResource::Token(_) => TokenSpec::KIND,
            AnyResource::Lock(_) => LockSpec::KIND,
            AnyResource::BotInstance(_) => BotInstanceSpec::KIND,
            AnyResource::WorkloadIdentity(_) => WorkloadIdentitySpec::KIND,
            AnyResource::WorkloadIdentityX509Revocation(_) => {
                WorkloadIdentityX509RevocationSpec::KIND
            }
            AnyResource::KubernetesCluster(_) => KubernetesClusterSpec::KIND,
            AnyResource::Database(_) => crate::database::DatabaseSpec::KIND,
            AnyResource::SpiffeFederation(_) => {
                crate::spiffe_federation::SpiffeFederationSpec::KIND
            }
            AnyResource::App(_) => crate::app::AppSpec::KIND,
        }
    }

    /// The resource name.
    pub fn name(&self) -> &str {
        &self.metadata().name
    }

    /// The metadata.
    pub fn metadata(&self) -> &Metadata {
        match self {
            AnyResource::Role(r) => &r.metadata,
            AnyResource::Bot(r) => &r.metadata,
            AnyResource::Token(r) => &r.metadata,
            AnyResource::Lock(r) => &r.metadata,
            AnyResource::BotInstance(r) => &r.metadata,
            AnyResource::WorkloadIdentity(r) => &r.metadata,
            AnyResource::WorkloadIdentityX509Revocation(r) => &r.metadata,
            AnyResource::KubernetesCluster(r) => &r.metadata,
            AnyResource::Database(r) => &r.metadata,
            AnyResource::SpiffeFederation(r) => &r.metadata,
            AnyResource::App(r) => &r.metadata,
        }
    }

    /// Runs the kind's validation.
    pub fn validate(&self) -> Result<(), ValidationError> {
        match self {
            AnyResource::Role(r) => r.validate(),
            AnyResource::Bot(r) => r.validate(),
            AnyResource::Token(r) => r.validate(),
            AnyResource::Lock(r) => r.validate(),
            AnyResource::BotInstance(r) => r.validate(),
            AnyResource::WorkloadIdentity(r) => r.validate(),
            AnyResource::WorkloadIdentityX509Revocation(r) => r.validate(),
            AnyResource::KubernetesCluster(r) => r.validate(),
            AnyResource::Database(r) => r.validate(),
            AnyResource::SpiffeFederation(r) => r.validate(),
            AnyResource::App(r) => r.validate(),
        }
    }

    /// The resource as JSON. Fails only if a timestamp cannot be written as
    /// RFC 3339 (year outside 0..=9999).
    pub fn to_json_value(&self) -> Result<serde_json::Value, serde_json::Error> {
        serde_json::to_value(self)
    }
}

macro_rules! any_from {
    ($($variant:ident($ty:ty)),*) => {$(
        impl From<$ty> for AnyResource {
            fn from(r: $ty) -> Self {
                AnyResource::$variant(r)
            }
        }
    )*};
}
any_from!(
    Role(Role),
    Bot(Bot),
    Token(Token),
    Lock(Lock),
    BotInstance(BotInstance),
    WorkloadIdentity(WorkloadIdentity),
    WorkloadIdentityX509Revocation(WorkloadIdentityX509Revocation),
    KubernetesCluster(KubernetesCluster),
    Database(Database),
    SpiffeFederation(crate::spiffe_federation::SpiffeFederation),
    App(App)
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "deployer", "ci-bot_1.prod", "x@y", &"a".repeat(253)] {
            assert!(validate_name("bot", ok).is_ok(), "{ok}");
        }
        for bad in ["", ".x", "-x", "a b", "a/b", "a:b", "é", &"a".repeat(254)] {
            let err = validate_name("bot", bad).unwrap_err();
            assert_eq!(err.field, "metadata.name");
        }
        for bad in [
            "../x",
            "..",
            "a..b",
            "_x",
            "@x",
            "a/../b",
            "x\u{1b}[31m",
            "x\0",
            "x\u{202E}",
            "x\u{200B}",
            "x\n",
            "a\\b",
        ] {
            let err = check_name("bot", bad).unwrap_err();
            assert_eq!(err.field, "name", "{bad:?}");
            assert!(!err.message.contains('\u{1b}'), "{err}");
            assert!(!err.message.contains('\u{202E}'), "{err}");
        }
        for ok in [
            "a.b",
            "a-b_c@d",
            "0",
            "5f3c1d7e-8c36-4d7a-9f35-0c1f1b2a3c4d",
        ] {
            check_name("bot", ok).unwrap();
        }
    }

    #[test]
    fn token_name_errors_do_not_echo_secret() {
        let err = validate_name("token", "s3cr3t value").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err = validate_name("token", "-s3cr3t").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
    }

    #[test]
    fn labels_and_description() {
        let mut bot = Bot::new(
            Metadata::named("b"),
            BotSpec {
                roles: vec!["r".into()],
                max_ttl: None,
                uid: String::new(),
                created_at: None,
            },
        );
        bot.metadata
            .labels
            .insert("example.com/team".into(), "infra é".into());
        bot.metadata.description = Some("line one\nline two".into());
        bot.validate().unwrap();
        for bad_key in ["", "-x", "a b", "a\u{1b}", "a:b"] {
            let mut b = bot.clone();
            b.metadata.labels.insert(bad_key.into(), "v".into());
            assert_eq!(
                b.validate().unwrap_err().field,
                "metadata.labels",
                "{bad_key:?}"
            );
        }
        for bad_value in ["\u{1b}[2J", "a\u{202E}b", "a\nb", &"v".repeat(254)] {
            let mut b = bot.clone();
            b.metadata.labels.insert("k".into(), bad_value.into());
            assert_eq!(b.validate().unwrap_err().field, "metadata.labels.k");
        }
        let mut b = bot.clone();
        b.metadata.description = Some("bad \u{1b}]0;title\u{7}".into());
        assert_eq!(b.validate().unwrap_err().field, "metadata.description");
    }

    #[test]
    fn envelope_checks_kind_and_version() {
        let mut bot = Bot::new(
            Metadata::named("b"),
            BotSpec {
                roles: vec!["r".into()],
                max_ttl: None,
                uid: String::new(),
                created_at: None,
            },
        );
        assert!(bot.validate().is_ok());
        bot.version = "v2".into();
        assert_eq!(bot.validate().unwrap_err().field, "version");
        bot.version = "v1".into();
        bot.kind = "role".into();
        assert_eq!(bot.validate().unwrap_err().field, "kind");
    }

    #[test]
    fn any_resource_json() {
        let bot: AnyResource = Bot::new(
            Metadata::named("b"),
            BotSpec {
                roles: vec!["r".into()],
                max_ttl: None,
                uid: String::new(),
                created_at: None,
            },
        )
        .into();
        assert_eq!(bot.kind(), "bot");
        assert_eq!(bot.name(), "b");
        let v = bot.to_json_value().unwrap();
        assert_eq!(v["kind"], "bot");
        assert_eq!(v["version"], "v1");
        assert_eq!(v["spec"]["roles"][0], "r");
    }
}
