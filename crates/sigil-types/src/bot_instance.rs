//! `bot_instance`: one agent installation. Written by the server.

use crate::resource::{Kind, Resource, ValidationError, validate_envelope, validate_ref};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use time::OffsetDateTime;

/// How many authentications and heartbeats a bot instance keeps.
pub const HISTORY_CAP: usize = 10;

/// One successful join or renewal, recorded by the server (trusted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Authentication {
    /// When it happened.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Join method or `renew`.
    pub method: String,
    /// Peer address as seen by the server.
    pub remote_addr: String,
    /// SHA-256 (hex) of the public key that was certified.
    pub public_key_sha256: String,
    /// Generation issued by this authentication.
    pub generation: u64,
    /// Method-specific attested attributes (e.g. repository, ref).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub attributes: BTreeMap<String, String>,
}

/// A self-reported agent heartbeat (untrusted).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    /// When it was sent.
    #[serde(with = "time::serde::rfc3339")]
    pub time: OffsetDateTime,
    /// Agent host name.
    pub hostname: String,
    /// Agent version.
    pub version: String,
    /// Operating system.
    pub os: String,
    /// Agent uptime in seconds.
    pub uptime_seconds: u64,
    /// True for `--oneshot` runs.
    #[serde(default)]
    pub one_shot: bool,
}

/// Body of a `bot_instance`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BotInstanceSpec {
    /// The bot this instance belongs to.
    pub bot_name: String,
    /// Instance id (UUID).
    pub instance_id: String,
    /// Join method used at first join.
    pub join_method: String,
    /// The token it joined through, by name — only for methods whose token
    /// name is not a secret (every method but `token`). A delegated re-proof
    /// must come through the same token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_token: Option<String>,
    /// Last generation the server issued.
    pub generation: u64,
    /// SHA-256 (hex) of the currently certified public key.
    #[serde(default)]
    pub current_key_sha256: String,
    /// SHA-256 (hex) of a key the agent announced but is not yet confirmed
    /// (crash-safe renewal: a retry with this key is not theft).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_key_sha256: Option<String>,
    /// The first join.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_authentication: Option<Authentication>,
    /// Latest authentications, newest first, at most [`HISTORY_CAP`].
    #[serde(default)]
    pub authentications: Vec<Authentication>,
    /// Latest heartbeats, newest first, at most [`HISTORY_CAP`].
    #[serde(default)]
    pub heartbeats: Vec<Heartbeat>,
}

/// Inserts `item` at the front and keeps at most `cap` items.
fn push_capped<T>(list: &mut Vec<T>, item: T, cap: usize) {
    list.insert(0, item);
    list.truncate(cap);
}

impl BotInstanceSpec {
    /// Records an authentication (newest first, at most `cap` kept). The first
    /// one ever is also kept as `initial_authentication`.
    pub fn push_authentication(&mut self, a: Authentication, cap: usize) {
        if self.initial_authentication.is_none() {
            self.initial_authentication = Some(a.clone());
        }
        push_capped(&mut self.authentications, a, cap);
    }

    /// Records a heartbeat (newest first, at most `cap` kept).
    pub fn push_heartbeat(&mut self, h: Heartbeat, cap: usize) {
        push_capped(&mut self.heartbeats, h, cap);
    }

    /// The most recent authentication, if any.
    pub fn latest_authentication(&self) -> Option<&Authentication> {
        self.authentications.first()
    }

    /// The most recent heartbeat, if any.
    pub fn latest_heartbeat(&self) -> Option<&Heartbeat> {
        self.heartbeats.first()
    }
}

impl Kind for BotInstanceSpec {
    const KIND: &'static str = "bot_instance";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        validate_ref("spec.bot_name", "bot", &res.spec.bot_name)?;
        if uuid::Uuid::parse_str(&res.spec.instance_id).is_err() {
            return Err(ValidationError::new(
                "spec.instance_id",
                format!("instance id {:?} is not a UUID", res.spec.instance_id),
            ));
        }
        if res.spec.join_method.is_empty() {
            return Err(ValidationError::new(
                "spec.join_method",
                "must not be empty",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(generation: u64) -> Authentication {
        Authentication {
            time: OffsetDateTime::UNIX_EPOCH,
            method: "token".into(),
            remote_addr: "127.0.0.1:1".into(),
            public_key_sha256: "ab".into(),
            generation,
            attributes: BTreeMap::new(),
        }
    }

    #[test]
    fn history_is_newest_first_and_capped() {
        let mut spec = BotInstanceSpec::default();
        for g in 1..=15 {
            spec.push_authentication(auth(g), HISTORY_CAP);
        }
        assert_eq!(spec.authentications.len(), HISTORY_CAP);
        assert_eq!(spec.authentications[0].generation, 15);
        assert_eq!(spec.authentications[9].generation, 6);
        assert_eq!(
            spec.initial_authentication.as_ref().map(|a| a.generation),
            Some(1)
        );
        for i in 0..3 {
            let hb = Heartbeat {
                time: OffsetDateTime::UNIX_EPOCH,
                hostname: format!("h{i}"),
                version: "0.1.0".into(),
                os: "linux".into(),
                uptime_seconds: i,
                one_shot: false,
            };
            spec.push_heartbeat(hb, 2);
        }
        assert_eq!(spec.heartbeats.len(), 2);
        assert_eq!(
            spec.latest_heartbeat().map(|h| h.hostname.as_str()),
            Some("h2")
        );
    }

    #[test]
    fn serde_roundtrip() {
        let mut spec = BotInstanceSpec {
            bot_name: "b".into(),
            instance_id: uuid::Uuid::new_v4().to_string(),
            join_method: "token".into(),
            generation: 1,
            ..Default::default()
        };
        spec.push_authentication(auth(1), HISTORY_CAP);
        let json = serde_json::to_string(&spec).unwrap();
        assert!(json.contains("\"time\":\"1970-01-01T00:00:00Z\""), "{json}");
        let back: BotInstanceSpec = serde_json::from_str(&json).unwrap();
        assert_eq!(back, spec);
    }
}
