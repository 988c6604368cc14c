//! `token`: how a bot may join. The resource name is the secret.

use crate::resource::{Kind, Resource, ValidationError, validate_envelope, validate_ref};
use serde::{Deserialize, Serialize};
use std::fmt;

/// Join methods. Serialized in snake_case (`bound_keypair`, ...).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum JoinMethodKind {
    /// Single-use secret join token.
    Token,
    /// Pre-registered key pair with challenge-response.
    BoundKeypair,
    /// Kubernetes service-account token.
    Kubernetes,
    /// GitHub Actions OIDC token.
    Github,
    /// GitLab CI OIDC token.
    Gitlab,
    /// Generic OIDC token.
    Oidc,
    /// AWS signed identity request.
    Iam,
    /// TPM attestation.
    Tpm,
}

impl JoinMethodKind {
    /// All join methods.
    pub const ALL: [JoinMethodKind; 8] = [
        JoinMethodKind::Token,
        JoinMethodKind::BoundKeypair,
        JoinMethodKind::Kubernetes,
        JoinMethodKind::Github,
        JoinMethodKind::Gitlab,
        JoinMethodKind::Oidc,
        JoinMethodKind::Iam,
        JoinMethodKind::Tpm,
    ];

    /// The wire name, e.g. `bound_keypair`.
    pub fn as_str(&self) -> &'static str {
        match self {
            JoinMethodKind::Token => "token",
            JoinMethodKind::BoundKeypair => "bound_keypair",
            JoinMethodKind::Kubernetes => "kubernetes",
            JoinMethodKind::Github => "github",
            JoinMethodKind::Gitlab => "gitlab",
            JoinMethodKind::Oidc => "oidc",
            JoinMethodKind::Iam => "iam",
            JoinMethodKind::Tpm => "tpm",
        }
    }

    /// Parses a wire name.
    pub fn from_name(s: &str) -> Option<JoinMethodKind> {
        JoinMethodKind::ALL.into_iter().find(|m| m.as_str() == s)
    }
}

impl fmt::Display for JoinMethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of a `token`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The bot this token lets join.
    pub bot_name: String,
    /// How the joiner proves itself.
    pub join_method: JoinMethodKind,
}

impl Kind for TokenSpec {
    const KIND: &'static str = "token";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        validate_ref("spec.bot_name", "bot", &res.spec.bot_name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_method_names() {
        for m in JoinMethodKind::ALL {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(json, format!("\"{}\"", m.as_str()));
            assert_eq!(JoinMethodKind::from_name(m.as_str()), Some(m));
        }
        assert_eq!(JoinMethodKind::BoundKeypair.as_str(), "bound_keypair");
        assert!(serde_json::from_str::<JoinMethodKind>("\"BoundKeypair\"").is_err());
    }
}
