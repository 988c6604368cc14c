//! `bot`: a machine user holding roles.

use crate::duration::HumanDuration;
use crate::resource::{Kind, Resource, ValidationError, validate_envelope, validate_ref};
use serde::{Deserialize, Serialize};

/// Body of a `bot`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BotSpec {
    /// Role names; at least one.
    pub roles: Vec<String>,
    /// Upper bound on the bot's credential TTL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttl: Option<HumanDuration>,
    /// The bot's immutable unique id, assigned by the auth service when the
    /// bot is created. Certificates and tokens carry it, so a bot removed and
    /// re-created under the same name gets none of the old ones back. Empty
    /// only for bots created before ids existed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub uid: String,
    /// When the bot was created; set by the auth service.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub created_at: Option<time::OffsetDateTime>,
}

impl Kind for BotSpec {
    const KIND: &'static str = "bot";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        if res.spec.roles.is_empty() {
            return Err(ValidationError::new(
                "spec.roles",
                "a bot needs at least one role",
            ));
        }
        for (i, r) in res.spec.roles.iter().enumerate() {
            validate_ref(&format!("spec.roles[{i}]"), "role", r)?;
        }
        if res.spec.max_ttl.is_some_and(|t| t.0.is_zero()) {
            return Err(ValidationError::new(
                "spec.max_ttl",
                "must be greater than zero",
            ));
        }
        if let Some(t) = res.spec.max_ttl {
            crate::duration::check_duration(t.0)
                .map_err(|e| ValidationError::new("spec.max_ttl", e.to_string()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resource::{Bot, Metadata};

    #[test]
    fn validation() {
        let ok = Bot::new(
            Metadata::named("deployer"),
            BotSpec {
                roles: vec!["ci".into()],
                max_ttl: None,
                uid: String::new(),
                created_at: None,
            },
        );
        assert!(ok.validate().is_ok());
        let none = Bot::new(Metadata::named("deployer"), BotSpec::default());
        assert_eq!(none.validate().unwrap_err().field, "spec.roles");
        let bad = Bot::new(
            Metadata::named("deployer"),
            BotSpec {
                roles: vec!["a b".into()],
                max_ttl: None,
                uid: String::new(),
                created_at: None,
            },
        );
        assert_eq!(bad.validate().unwrap_err().field, "spec.roles[0]");
    }
}
