//! `lock`: cuts a target off at once.

use crate::resource::{Kind, Resource, ValidationError, validate_envelope, validate_ref};
use crate::role::validate_login;
use crate::spiffe::SpiffeId;
use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use time::OffsetDateTime;

/// What a lock applies to. Serialized as a one-key map, e.g. `{bot: deployer}`
/// (implemented by hand because serde_norway maps enums to YAML tags).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum LockTarget {
    /// A bot by name.
    Bot(String),
    /// A bot instance by instance id.
    BotInstance(String),
    /// Everyone holding a role.
    Role(String),
    /// A join token by name.
    Token(String),
    /// A SPIFFE ID.
    SpiffeId(String),
    /// An SSH login.
    Login(String),
    /// A database user: its db-client certificates go on every database's CRL.
    DbUser(String),
}

/// The target kinds, as serialized.
pub const LOCK_TARGET_KINDS: &[&str] = &[
    "bot",
    "bot_instance",
    "role",
    "token",
    "spiffe_id",
    "login",
    "db_user",
];

impl LockTarget {
    /// Builds a target from its kind name (`bot`, `spiffe_id`, ...) and value.
    pub fn from_parts(kind: &str, value: impl Into<String>) -> Option<LockTarget> {
        let value = value.into();
        Some(match kind {
            "bot" => LockTarget::Bot(value),
            "bot_instance" => LockTarget::BotInstance(value),
            "role" => LockTarget::Role(value),
            "token" => LockTarget::Token(value),
            "spiffe_id" => LockTarget::SpiffeId(value),
            "login" => LockTarget::Login(value),
            "db_user" => LockTarget::DbUser(value),
            _ => return None,
        })
    }

    /// The target kind as serialized, e.g. `bot_instance`.
    pub fn kind_str(&self) -> &'static str {
        match self {
            LockTarget::Bot(_) => "bot",
            LockTarget::BotInstance(_) => "bot_instance",
            LockTarget::Role(_) => "role",
            LockTarget::Token(_) => "token",
            LockTarget::SpiffeId(_) => "spiffe_id",
            LockTarget::Login(_) => "login",
            LockTarget::DbUser(_) => "db_user",
        }
    }

    /// The targeted value, e.g. the bot name.
    pub fn value(&self) -> &str {
        match self {
            LockTarget::Bot(v)
            | LockTarget::BotInstance(v)
            | LockTarget::Role(v)
            | LockTarget::Token(v)
            | LockTarget::SpiffeId(v)
            | LockTarget::Login(v)
            | LockTarget::DbUser(v) => v,
        }
    }
}

/// `bot=deployer`. Note: for `Token` this shows the token name, which is a
/// secret; log token targets by hash instead.
impl fmt::Display for LockTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={}", self.kind_str(), self.value())
    }
}

impl Serialize for LockTarget {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(1))?;
        map.serialize_entry(self.kind_str(), self.value())?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for LockTarget {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = LockTarget;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a one-key map such as {{bot: deployer}} with key one of {}",
                    LOCK_TARGET_KINDS.join(", ")
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<LockTarget, A::Error> {
                let Some(kind) = map.next_key::<String>()? else {
                    return Err(de::Error::invalid_length(0, &self));
                };
                if !LOCK_TARGET_KINDS.contains(&kind.as_str()) {
                    return Err(de::Error::unknown_variant(&kind, LOCK_TARGET_KINDS));
                }
                let value: String = map.next_value()?;
                if map.next_key::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(
                        "a lock target must have exactly one key (e.g. {bot: deployer})",
                    ));
                }
                LockTarget::from_parts(&kind, value)
                    .ok_or_else(|| de::Error::unknown_variant(&kind, LOCK_TARGET_KINDS))
            }
        }
        deserializer.deserialize_map(V)
    }
}

/// Body of a `lock`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LockSpec {
    /// What is locked.
    pub target: LockTarget,
    /// Why, shown to the locked party.
    #[serde(default)]
    pub message: String,
    /// Who created the lock.
    #[serde(default)]
    pub created_by: String,
    /// When the lock was created.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub created_at: Option<OffsetDateTime>,
}

/// True for a token reference as locks store it: `sha256:` and 64 lowercase hex.
fn is_token_ref(v: &str) -> bool {
    v.strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
}

impl Kind for LockSpec {
    const KIND: &'static str = "lock";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        crate::text::check_free_text(&res.spec.message, 1024, true)
            .map_err(|m| ValidationError::new("spec.message", m))?;
        res.spec
            .target
            .check()
            .map_err(|e| ValidationError::new(format!("spec.{}", e.field), e.message))
    }
}

impl LockTarget {
    /// Checks the target's value with the rule for what it names (a bot or
    /// role name, a token or its `sha256:` reference, a bot instance UUID, a
    /// SPIFFE ID, a login). The error's field is `target.KIND`; the admin API
    /// calls this for `locks add`, resources for `spec.target`.
    pub fn check(&self) -> Result<(), ValidationError> {
        let field = format!("target.{}", self.kind_str());
        match self {
            LockTarget::Bot(v) => validate_ref(&field, "bot", v),
            LockTarget::Role(v) => validate_ref(&field, "role", v),
            // The stored form is the secret's hash, `sha256:<64 hex>`.
            LockTarget::Token(v) if is_token_ref(v) => Ok(()),
            LockTarget::Token(v) => validate_ref(&field, "token", v),
            LockTarget::BotInstance(v) => uuid::Uuid::parse_str(v).map(|_| ()).map_err(|_| {
                ValidationError::new(
                    field,
                    format!(
                        "bot instance id \"{}\" is not a UUID",
                        crate::text::escape_unsafe(v)
                    ),
                )
            }),
            LockTarget::SpiffeId(v) => SpiffeId::parse(v)
                .map(|_| ())
                .map_err(|e| ValidationError::new(field, e.to_string())),
            LockTarget::Login(v) => validate_login(v).map_err(|m| ValidationError::new(field, m)),
            LockTarget::DbUser(v) => {
                crate::database::validate_db_user(v).map_err(|m| ValidationError::new(field, m))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Lock, Metadata};

    fn lock(target: LockTarget) -> Lock {
        Lock::new(
            Metadata::named("l1"),
            LockSpec {
                target,
                message: String::new(),
                created_by: String::new(),
                created_at: None,
            },
        )
    }

    #[test]
    fn target_serde_and_display() {
        let t: LockTarget = serde_norway::from_str("bot: deployer").unwrap();
        assert_eq!(t, LockTarget::Bot("deployer".into()));
        assert_eq!(t.to_string(), "bot=deployer");
        let json = serde_json::to_string(&LockTarget::SpiffeId("spiffe://x/y".into())).unwrap();
        assert_eq!(json, r#"{"spiffe_id":"spiffe://x/y"}"#);
        let t: LockTarget = serde_json::from_str(r#"{"bot_instance":"abc"}"#).unwrap();
        assert_eq!((t.kind_str(), t.value()), ("bot_instance", "abc"));
        assert!(serde_json::from_str::<LockTarget>(r#"{"user":"x"}"#).is_err());
        assert!(serde_json::from_str::<LockTarget>(r#"{"bot":"x","role":"y"}"#).is_err());
        assert!(serde_json::from_str::<LockTarget>(r#"{}"#).is_err());
        let yaml = serde_norway::to_string(&LockTarget::Role("r".into())).unwrap();
        assert_eq!(yaml, "role: r\n");
    }

    #[test]
    fn validation() {
        assert!(lock(LockTarget::Bot("deployer".into())).validate().is_ok());
        assert!(
            lock(LockTarget::SpiffeId("spiffe://example.org/a".into()))
                .validate()
                .is_ok()
        );
        assert!(
            lock(LockTarget::BotInstance(uuid::Uuid::new_v4().to_string()))
                .validate()
                .is_ok()
        );
        let err = lock(LockTarget::SpiffeId("spiffe://Example.org".into()))
            .validate()
            .unwrap_err();
        assert_eq!(err.field, "spec.target.spiffe_id");
        assert!(
            lock(LockTarget::BotInstance("nope".into()))
                .validate()
                .is_err()
        );
        assert!(lock(LockTarget::Login("a b".into())).validate().is_err());
        assert!(lock(LockTarget::Bot("../x".into())).validate().is_err());
        let hashed = format!("sha256:{}", "ab".repeat(32));
        assert!(lock(LockTarget::Token(hashed)).validate().is_ok());
        let mut l = lock(LockTarget::Bot("b".into()));
        l.spec.message = "pwned\u{1b}[2J".into();
        assert_eq!(l.validate().unwrap_err().field, "spec.message");
        let err = lock(LockTarget::Token("se cret".into()))
            .validate()
            .unwrap_err();
        assert!(!err.to_string().contains("se cret"));
    }
}
