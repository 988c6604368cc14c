//! Token sections of the methods that prove a machine rather than a CI run:
//! `iam` (an AWS-signed `sts:GetCallerIdentity`), `tpm` (the endorsement key)
//! and `bound_keypair` (a key registered with the token).

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::rules::{AllowRule, validate_rules};
use crate::resource::ValidationError;

/// Fields an `iam` rule may test.
pub const IAM_RULE_FIELDS: [&str; 2] = ["aws_account", "aws_arn"];
/// Fields a `tpm` rule may test.
pub const TPM_RULE_FIELDS: [&str; 2] = ["ek_public_hash", "ek_certificate_serial"];

/// `iam`: AWS accounts and ARNs (globs) that may join.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct IamJoin {
    /// OR'd entries over `aws_account`, `aws_arn`.
    pub allow: Vec<AllowRule>,
}

impl IamJoin {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        validate_rules(
            &format!("{path}.allow"),
            &self.allow,
            Some(&IAM_RULE_FIELDS),
            &IAM_RULE_FIELDS,
        )
    }
}

/// `tpm`: endorsement keys that may join.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct TpmJoin {
    /// OR'd entries over `ek_public_hash` (SHA-256 hex of the EK's
    /// SubjectPublicKeyInfo) and `ek_certificate_serial` (hex).
    pub allow: Vec<AllowRule>,
    /// PEM CA certificates; when set, the TPM must present an EK certificate
    /// that chains to one of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ekcert_allowed_cas: Vec<String>,
}

impl TpmJoin {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        for (i, ca) in self.ekcert_allowed_cas.iter().enumerate() {
            if !ca.contains("-----BEGIN CERTIFICATE-----") {
                return Err(ValidationError::new(
                    format!("{path}.ekcert_allowed_cas[{i}]"),
                    "must be a PEM certificate",
                ));
            }
        }
        if self.ekcert_allowed_cas.is_empty()
            && let Some(i) = self
                .allow
                .iter()
                .position(|r| r.0.contains_key("ek_certificate_serial"))
        {
            return Err(ValidationError::new(
                format!("{path}.allow[{i}].ek_certificate_serial"),
                "a certificate serial is only a verified claim when ekcert_allowed_cas names the CA that signed it; add ekcert_allowed_cas or match ek_public_hash",
            ));
        }
        validate_rules(
            &format!("{path}.allow"),
            &self.allow,
            Some(&TPM_RULE_FIELDS),
            &TPM_RULE_FIELDS,
        )
    }
}

/// How the first key is bound to a `bound_keypair` token.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BoundKeypairOnboarding {
    /// The agent's public key, registered up front (OpenSSH
    /// authorized_keys format, e.g. `ssh-ed25519 AAAA...`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_public_key: Option<String>,
    /// A one-time secret with which the agent registers the key it generated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration_secret: Option<String>,
    /// The registration secret stops working at this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub must_register_before: Option<OffsetDateTime>,
}

/// How often a lost instance may rejoin with the bound key.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BoundKeypairRecovery {
    /// Joins that create a new bot instance (the first join counts).
    #[serde(default = "default_recovery_limit")]
    pub limit: u32,
}

impl Default for BoundKeypairRecovery {
    fn default() -> Self {
        BoundKeypairRecovery {
            limit: default_recovery_limit(),
        }
    }
}

fn default_recovery_limit() -> u32 {
    1
}

/// `bound_keypair`: a key pair bound to the token replaces a long-lived secret.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(deny_unknown_fields)]
pub struct BoundKeypairJoin {
    /// How the first key is bound.
    pub onboarding: BoundKeypairOnboarding,
    /// Rejoin budget.
    #[serde(default)]
    pub recovery: BoundKeypairRecovery,
    /// The agent must rotate its key at its next join after this time.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "time::serde::rfc3339::option"
    )]
    pub rotate_after: Option<OffsetDateTime>,
}

/// Shortest registration secret accepted.
pub const MIN_REGISTRATION_SECRET_LEN: usize = 16;

impl BoundKeypairJoin {
    pub(crate) fn validate(&self, path: &str) -> Result<(), ValidationError> {
        let o = &self.onboarding;
        match (&o.initial_public_key, &o.registration_secret) {
            (Some(_), Some(_)) | (None, None) => {
                return Err(ValidationError::new(
                    format!("{path}.onboarding"),
                    "give exactly one of initial_public_key and registration_secret",
                ));
            }
            (Some(k), None) => {
                let mut parts = k.split_whitespace();
                let (Some(alg), Some(b64)) = (parts.next(), parts.next()) else {
                    return Err(ValidationError::new(
                        format!("{path}.onboarding.initial_public_key"),
                        "must be an OpenSSH public key line (`ssh-ed25519 AAAA...`)",
                    ));
                };
                if !alg.starts_with("ssh-") && !alg.starts_with("ecdsa-") || b64.len() < 16 {
                    return Err(ValidationError::new(
                        format!("{path}.onboarding.initial_public_key"),
                        "must be an OpenSSH public key line (`ssh-ed25519 AAAA...`)",
                    ));
                }
            }
            (None, Some(s)) => {
                if s.len() < MIN_REGISTRATION_SECRET_LEN {
                    return Err(ValidationError::new(
                        format!("{path}.onboarding.registration_secret"),
                        format!(
                            "use at least {MIN_REGISTRATION_SECRET_LEN} characters of randomness"
                        ),
                    ));
                }
            }
        }
        if self.recovery.limit == 0 {
            return Err(ValidationError::new(
                format!("{path}.recovery.limit"),
                "must be at least 1 (the first join counts)",
            ));
        }
        Ok(())
    }
}
