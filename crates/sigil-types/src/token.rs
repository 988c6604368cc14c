//! `token`: how a bot may join. For join method `token` the resource name is
//! the secret; for every other method it is a plain name the agent refers to,
//! and the method's section (`github:`, `iam:`, ...) says who may use it.

mod machine;
mod oidc_family;
mod rules;

use crate::resource::{Kind, Resource, ValidationError, validate_envelope, validate_ref};
use serde::{Deserialize, Serialize};
use std::fmt;

pub use machine::{
    BoundKeypairJoin, BoundKeypairOnboarding, BoundKeypairRecovery, IAM_RULE_FIELDS, IamJoin,
    MIN_REGISTRATION_SECRET_LEN, TPM_RULE_FIELDS, TpmJoin,
};
pub use oidc_family::{
    GITHUB_ISSUER, GITHUB_RULE_FIELDS, GITLAB_ISSUER, GITLAB_RULE_FIELDS, GithubJoin, GitlabJoin,
    KUBERNETES_RULE_FIELDS, KubernetesJoin, OidcJoin, github_attributes, gitlab_attributes,
    kubernetes_attributes, oidc_attributes, oidc_attributes_with,
};
pub use rules::{AllowRule, JoinAttributes, JoinRuleDecision, evaluate_rules, validate_rules};

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

    /// Delegated methods prove with evidence the platform gives the machine;
    /// their credentials are not renewable, the agent re-proves each time.
    pub fn is_delegated(&self) -> bool {
        !matches!(self, JoinMethodKind::Token | JoinMethodKind::BoundKeypair)
    }
}

impl fmt::Display for JoinMethodKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Body of a `token`: the bot, the method, and the method's section.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TokenSpec {
    /// The bot this token lets join.
    pub bot_name: String,
    /// The uid of that bot when the token was made (set by the auth service):
    /// a token outlives neither its bot nor a re-created bot of the same name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub bot_uid: String,
    /// How the joiner proves itself.
    pub join_method: JoinMethodKind,
    /// `bound_keypair` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_keypair: Option<BoundKeypairJoin>,
    /// `kubernetes` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<KubernetesJoin>,
    /// `github` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub github: Option<GithubJoin>,
    /// `gitlab` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gitlab: Option<GitlabJoin>,
    /// `oidc` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oidc: Option<OidcJoin>,
    /// `iam` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iam: Option<IamJoin>,
    /// `tpm` settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<TpmJoin>,
}

impl TokenSpec {
    /// A spec for `bot` with `method` and no method section.
    pub fn new(bot: impl Into<String>, method: JoinMethodKind) -> Self {
        TokenSpec {
            bot_name: bot.into(),
            bot_uid: String::new(),
            join_method: method,
            bound_keypair: None,
            kubernetes: None,
            github: None,
            gitlab: None,
            oidc: None,
            iam: None,
            tpm: None,
        }
    }

    /// True when the token's name is its secret (method `token`).
    pub fn name_is_secret(&self) -> bool {
        self.join_method == JoinMethodKind::Token
    }

    /// The allow rules of the method's section (none for `token` and
    /// `bound_keypair`, which match a secret or a key, not claims).
    pub fn allow_rules(&self) -> &[AllowRule] {
        match self.join_method {
            JoinMethodKind::Token | JoinMethodKind::BoundKeypair => &[],
            JoinMethodKind::Kubernetes => self.kubernetes.as_ref().map_or(&[], |s| &s.allow),
            JoinMethodKind::Github => self.github.as_ref().map_or(&[], |s| &s.allow),
            JoinMethodKind::Gitlab => self.gitlab.as_ref().map_or(&[], |s| &s.allow),
            JoinMethodKind::Oidc => self.oidc.as_ref().map_or(&[], |s| &s.allow),
            JoinMethodKind::Iam => self.iam.as_ref().map_or(&[], |s| &s.allow),
            JoinMethodKind::Tpm => self.tpm.as_ref().map_or(&[], |s| &s.allow),
        }
    }

    /// Every field name the allow rules test.
    pub fn rule_fields(&self) -> Vec<&str> {
        let mut f: Vec<&str> = self
            .allow_rules()
            .iter()
            .flat_map(|r| r.0.keys().map(String::as_str))
            .collect();
        f.sort_unstable();
        f.dedup();
        f
    }

    /// Match verified attributes against the allow rules.
    pub fn evaluate(&self, attrs: &JoinAttributes) -> JoinRuleDecision {
        evaluate_rules(self.allow_rules(), attrs)
    }

    /// Join attributes from raw claims as a method would verify them (for
    /// `sigil tokens test`): an ID token's claims for the OIDC methods,
    /// `{aws_account, aws_arn}` for `iam`, `{ek_public_hash,
    /// ek_certificate_serial}` for `tpm`.
    pub fn attributes_from_claims(
        &self,
        claims: &serde_json::Value,
    ) -> Result<JoinAttributes, String> {
        let flat = |fields: &[&str]| {
            let mut a = JoinAttributes::new();
            for f in fields {
                match claims.get(*f) {
                    Some(serde_json::Value::String(s)) => {
                        a.insert((*f).to_string(), s.clone());
                    }
                    Some(serde_json::Value::Number(n)) => {
                        a.insert((*f).to_string(), n.to_string());
                    }
                    _ => {}
                }
            }
            a
        };
        match self.join_method {
            JoinMethodKind::Token | JoinMethodKind::BoundKeypair => Err(format!(
                "join method {} checks a secret or a key, not claims",
                self.join_method
            )),
            JoinMethodKind::Github => Ok(github_attributes(claims)),
            JoinMethodKind::Gitlab => Ok(gitlab_attributes(claims)),
            JoinMethodKind::Oidc => Ok(oidc_attributes_with(claims, &self.rule_fields())),
            JoinMethodKind::Kubernetes => kubernetes_attributes(claims).ok_or_else(|| {
                "sub is not a service account's (system:serviceaccount:NAMESPACE:NAME)".to_string()
            }),
            JoinMethodKind::Iam => Ok(flat(&["aws_account", "aws_arn", "aws_user_id"])),
            JoinMethodKind::Tpm => Ok(flat(&TPM_RULE_FIELDS)),
        }
    }

    fn validate_sections(&self) -> Result<(), ValidationError> {
        let present = [
            (JoinMethodKind::BoundKeypair, self.bound_keypair.is_some()),
            (JoinMethodKind::Kubernetes, self.kubernetes.is_some()),
            (JoinMethodKind::Github, self.github.is_some()),
            (JoinMethodKind::Gitlab, self.gitlab.is_some()),
            (JoinMethodKind::Oidc, self.oidc.is_some()),
            (JoinMethodKind::Iam, self.iam.is_some()),
            (JoinMethodKind::Tpm, self.tpm.is_some()),
        ];
        for (m, is_set) in present {
            if is_set && m != self.join_method {
                return Err(ValidationError::new(
                    format!("spec.{m}"),
                    format!(
                        "this section is for join method {m}, but join_method is {}",
                        self.join_method
                    ),
                ));
            }
            if !is_set && m == self.join_method {
                return Err(ValidationError::new(
                    format!("spec.{m}"),
                    format!("join method {m} needs a `{m}:` section (see the README)"),
                ));
            }
        }
        let path = format!("spec.{}", self.join_method);
        match self.join_method {
            JoinMethodKind::Token => Ok(()),
            JoinMethodKind::BoundKeypair => self
                .bound_keypair
                .as_ref()
                .map_or(Ok(()), |s| s.validate(&path)),
            JoinMethodKind::Kubernetes => self
                .kubernetes
                .as_ref()
                .map_or(Ok(()), |s| s.validate(&path)),
            JoinMethodKind::Github => self.github.as_ref().map_or(Ok(()), |s| s.validate(&path)),
            JoinMethodKind::Gitlab => self.gitlab.as_ref().map_or(Ok(()), |s| s.validate(&path)),
            JoinMethodKind::Oidc => self.oidc.as_ref().map_or(Ok(()), |s| s.validate(&path)),
            JoinMethodKind::Iam => self.iam.as_ref().map_or(Ok(()), |s| s.validate(&path)),
            JoinMethodKind::Tpm => self.tpm.as_ref().map_or(Ok(()), |s| s.validate(&path)),
        }
    }
}

impl Kind for TokenSpec {
    const KIND: &'static str = "token";

    fn validate(res: &Resource<Self>) -> Result<(), ValidationError> {
        validate_envelope(res)?;
        validate_ref("spec.bot_name", "bot", &res.spec.bot_name)?;
        if res.spec.name_is_secret() && !is_token_secret(&res.metadata.name) {
            return Err(ValidationError::new(
                "metadata.name",
                "a join_method: token token's name is its secret: 32 lowercase hex characters \
                 (128 random bits); let `sigil tokens add` generate it",
            ));
        }
        res.spec.validate_sections()
    }
}

/// True for the form of a `join_method: token` secret: 32 lowercase hex
/// characters, as `sigil tokens add` generates.
pub fn is_token_secret(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
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
        assert!(!JoinMethodKind::Token.is_delegated());
        assert!(!JoinMethodKind::BoundKeypair.is_delegated());
        assert!(JoinMethodKind::Github.is_delegated() && JoinMethodKind::Tpm.is_delegated());
    }

    #[test]
    fn the_issue_example_parses_validates_and_evaluates() {
        let yaml = "kind: token\nversion: v1\nmetadata: {name: ci-github, expires: \"2027-01-01T00:00:00Z\"}\nspec:\n  bot_name: deployer\n  join_method: github\n  github:\n    allow:\n      - {repository: acme/infra, ref: refs/heads/main, environment: prod}\n";
        let res = crate::parse_resources(yaml, "t.yaml").unwrap();
        let crate::AnyResource::Token(t) = &res[0] else {
            panic!("not a token")
        };
        let claims = serde_json::json!({"repository": "acme/infra", "ref": "refs/heads/main", "environment": "prod"});
        let attrs = t.spec.attributes_from_claims(&claims).unwrap();
        assert_eq!(t.spec.evaluate(&attrs).matched_rule, Some(0));
        let claims = serde_json::json!({"repository": "acme/infra", "ref": "refs/heads/dev", "environment": "prod"});
        let attrs = t.spec.attributes_from_claims(&claims).unwrap();
        let d = t.spec.evaluate(&attrs);
        assert!(!d.is_allowed() && d.summary().contains("ref"), "{d:?}");
    }

    #[test]
    fn sections_must_match_the_method() {
        let mut spec = TokenSpec::new("b", JoinMethodKind::Github);
        assert!(spec.validate_sections().unwrap_err().field == "spec.github");
        spec.iam = Some(IamJoin::default());
        spec.join_method = JoinMethodKind::Token;
        assert_eq!(spec.validate_sections().unwrap_err().field, "spec.iam");
        spec.iam = None;
        assert!(spec.validate_sections().is_ok());

        // A certificate serial is a claim only when a CA vouches for it.
        let mut spec = TokenSpec::new("b", JoinMethodKind::Tpm);
        let rule: AllowRule = serde_json::from_str(r#"{"ek_certificate_serial": "02"}"#).unwrap();
        spec.tpm = Some(TpmJoin {
            allow: vec![rule],
            ekcert_allowed_cas: vec![],
        });
        let e = spec.validate_sections().unwrap_err();
        assert_eq!(e.field, "spec.tpm.allow[0].ek_certificate_serial", "{e}");
        if let Some(t) = spec.tpm.as_mut() {
            t.ekcert_allowed_cas = vec!["-----BEGIN CERTIFICATE-----\nx\n".into()];
        }
        assert!(spec.validate_sections().is_ok());
    }
}
