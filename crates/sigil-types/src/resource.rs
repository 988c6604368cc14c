//! The common resource envelope `{kind, version, metadata, spec}`, the `Kind`
//! trait each spec implements, name validation and `AnyResource`.

use crate::bot::BotSpec;
use crate::bot_instance::BotInstanceSpec;
use crate::lock::LockSpec;
use crate::revocation::WorkloadIdentityX509RevocationSpec;
use crate::role::RoleSpec;
use crate::token::TokenSpec;
use crate::workload_identity::WorkloadIdentitySpec;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

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

/// Checks the envelope: `kind` matches, `version` is `v1`, name is valid.
/// Every `Kind::validate` calls this first.
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
    validate_name(S::KIND, &res.metadata.name)
}

/// Checks a resource name: 1..=253 chars of `[A-Za-z0-9._@-]`, not starting
/// with `.` or `-`. Token names are secrets, so their errors never echo the name.
pub fn validate_name(kind: &str, name: &str) -> Result<(), ValidationError> {
    let field = "metadata.name";
    let shown = if kind == "token" {
        "<redacted>".to_string()
    } else {
        format!("{name:?}")
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
    if name.starts_with('.') || name.starts_with('-') {
        return Err(ValidationError::new(
            field,
            format!("{kind} name {shown} must not start with '.' or '-'"),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-')))
    {
        let what = if kind == "token" {
            "a character".to_string()
        } else {
            format!("character {c:?}")
        };
        return Err(ValidationError::new(
            field,
            format!("{kind} name {shown} contains {what} outside [A-Za-z0-9._@-]"),
        ));
    }
    Ok(())
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

/// Kind names `parse_resources` understands.
pub const KNOWN_KINDS: &[&str] = &[
    RoleSpec::KIND,
    BotSpec::KIND,
    TokenSpec::KIND,
    LockSpec::KIND,
    BotInstanceSpec::KIND,
    WorkloadIdentitySpec::KIND,
    WorkloadIdentityX509RevocationSpec::KIND,
];

/// Any resource, for code that handles several kinds (`sigil create -f`).
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
    WorkloadIdentityX509Revocation(WorkloadIdentityX509Revocation)
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
    }

    #[test]
    fn token_name_errors_do_not_echo_secret() {
        let err = validate_name("token", "s3cr3t value").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
        let err = validate_name("token", "-s3cr3t").unwrap_err();
        assert!(!err.to_string().contains("s3cr3t"), "{err}");
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
