//! Join methods: the server side of how a machine proves what it is. Each
//! method is one `JoinMethod` implementation in its own file, registered in
//! [`JoinRegistry::standard`]; the join stream and everything after the proof
//! (instance creation, issuance, audit) is shared.

mod bound_keypair;
mod bound_keypair_retry;
mod flow;
mod github;
mod gitlab;
mod iam;
mod jwt_verifier;
mod kubernetes;
mod oidc;
mod retry;
mod token;
mod tpm;
mod tpm_credential;

pub use flow::join;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sigil_proto::v1::JoinInit;
use sigil_store::Op;
use sigil_types::{JoinAttributes, JoinMethodKind, Token};

use crate::keys;
use crate::state::AuthState;

/// Why a join was refused. `reason` goes to the audit log only; the client
/// always hears "join denied", never whether a token exists.
#[derive(Debug)]
pub struct JoinDenied {
    pub reason: String,
    /// The evidence could not be checked (storage, an unreachable issuer):
    /// the client hears "unavailable" and retries; audited as
    /// `bot.join.unchecked`, not as a denial.
    pub unavailable: bool,
    /// Audit-safe fields: the claims that were checked, why no rule matched.
    pub audit: serde_json::Value,
    /// The agent hung up mid-challenge (it crashed, or its connection broke):
    /// nothing was refused and nobody hears an answer, so it is no denial.
    pub abandoned: bool,
}

impl JoinDenied {
    pub fn new(reason: impl Into<String>) -> Self {
        JoinDenied {
            reason: reason.into(),
            unavailable: false,
            audit: serde_json::Value::Null,
            abandoned: false,
        }
    }

    /// The agent went away during a challenge.
    pub fn abandoned() -> Self {
        JoinDenied {
            abandoned: true,
            ..JoinDenied::new("the agent went away during the challenge")
        }
    }

    /// Attach audit fields (checked claims, rule explanation).
    pub fn with_audit(mut self, audit: serde_json::Value) -> Self {
        self.audit = audit;
        self
    }

    pub fn unavailable(reason: impl Into<String>) -> Self {
        JoinDenied {
            reason: reason.into(),
            unavailable: true,
            audit: serde_json::Value::Null,
            abandoned: false,
        }
    }
}

/// A challenge channel to the joining agent, for challenge-response methods.
#[async_trait]
pub trait Conversation: Send {
    /// Send a challenge and wait for the agent's answer.
    async fn challenge(&mut self, payload: Vec<u8>) -> Result<Vec<u8>, JoinDenied>;
}

/// What a successful proof establishes.
pub struct Verified {
    pub bot_name: String,
    /// The uid of the bot the token was made for: a token of a removed bot
    /// never admits a re-created bot of the same name.
    pub bot_uid: String,
    /// The join token's name (for lock checks against `token` targets).
    pub token_name: String,
    /// Store operations committed atomically with the new instance, e.g. the
    /// deletion that consumes a single-use token. If they fail (the token was
    /// used concurrently) the join is denied.
    pub consume: Vec<Op>,
    /// Verified claims, recorded in the instance's history.
    pub attributes: BTreeMap<String, String>,
    /// Whether the resulting identity may renew itself (secret-based methods)
    /// or must re-prove each time (delegated methods).
    pub renewable: bool,
    /// Audit-safe fields describing the proof (e.g. the token's hash, the
    /// claims checked and the rule that matched).
    pub audit: serde_json::Value,
    /// Method state handed to the agent for its next join (bound_keypair's
    /// signed join state); empty for other methods.
    pub join_state: String,
    /// `token` method only: record the secret as spent, or answer a retry
    /// of the join that spent it (retry.rs).
    pub spend: retry::Spend,
}

/// The server half of a join method.
#[async_trait]
pub trait JoinMethod: Send + Sync {
    /// The `join_method` name in tokens and agent configs.
    fn name(&self) -> &'static str;
    /// Check the agent's evidence.
    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied>;
}

/// The join methods this server accepts, by name.
pub struct JoinRegistry {
    methods: HashMap<&'static str, Arc<dyn JoinMethod>>,
}

impl JoinRegistry {
    /// Every built-in method.
    pub fn standard() -> Self {
        // One key cache for every ID-token method: an issuer is fetched once.
        let id_keys = Arc::new(jwt_verifier::JwksCache::default());
        let all: Vec<Arc<dyn JoinMethod>> = vec![
            Arc::new(token::TokenJoin),
            Arc::new(bound_keypair::BoundKeypairJoinMethod),
            Arc::new(github::GithubMethod::new(id_keys.clone())),
            Arc::new(gitlab::GitlabMethod::new(id_keys.clone())),
            Arc::new(oidc::OidcMethod::new(id_keys.clone())),
            Arc::new(kubernetes::KubernetesMethod::new(id_keys)),
            Arc::new(tpm::TpmJoinMethod),
            Arc::new(iam::IamJoin),
        ];
        JoinRegistry {
            methods: all.into_iter().map(|m| (m.name(), m)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn JoinMethod>> {
        self.methods.get(name).cloned()
    }
}

/// The token a non-secret method names in `JoinInit.token`: it must exist,
/// be unexpired and be for `method`. Every refusal is a plain denial (the
/// client never learns which check failed).
pub async fn load_token(
    state: &AuthState,
    name: &str,
    method: JoinMethodKind,
) -> Result<Token, JoinDenied> {
    if name.is_empty() {
        return Err(JoinDenied::new("no token name presented"));
    }
    // Until the token is known not to be a `token`-method secret, it is
    // shown only by its hint: an agent may send a secret with the wrong method.
    let hint = keys::secret_hint(name);
    let hinted = || serde_json::json!({ "token": hint });
    let item = state
        .store
        .get(&keys::token(name))
        .await
        .map_err(|e| JoinDenied::unavailable(format!("token lookup failed: {e}")))?
        .ok_or_else(|| {
            JoinDenied::new(format!("token {hint} does not exist")).with_audit(hinted())
        })?;
    let token: Token = serde_json::from_slice(&item.value)
        .map_err(|e| JoinDenied::new(format!("token {hint} is undecodable: {e}")))?;
    if token.metadata.name != name || token.spec.name_is_secret() {
        return Err(JoinDenied::new(format!(
            "token {hint} is for join method {}, not {method}",
            token.spec.join_method
        ))
        .with_audit(hinted()));
    }
    let shown = || serde_json::json!({ "token": name });
    if token.metadata.is_expired(time::OffsetDateTime::now_utc()) {
        return Err(JoinDenied::new(format!("token {name:?} has expired")).with_audit(shown()));
    }
    if token.spec.join_method != method {
        return Err(JoinDenied::new(format!(
            "token {name:?} is for join method {}, not {method}",
            token.spec.join_method
        ))
        .with_audit(shown()));
    }
    Ok(token)
}

/// Match verified attributes against the token's allow rules. The audit
/// fields always carry the token, the claims checked and the explanation.
pub fn check_rules(token: &Token, attrs: &JoinAttributes) -> Result<serde_json::Value, JoinDenied> {
    let decision = token.spec.evaluate(attrs);
    let audit = serde_json::json!({
        "token": token.metadata.name,
        "claims": attrs,
        "matched_rule": decision.matched_rule,
        "rule_explanation": decision.explanation,
    });
    if decision.is_allowed() {
        Ok(audit)
    } else {
        Err(JoinDenied::new(format!(
            "no allow rule of token {:?} matched: {}",
            token.metadata.name,
            decision.summary()
        ))
        .with_audit(audit))
    }
}

/// The outcome of a delegated method whose evidence checked out: not
/// renewable, nothing consumed, the attributes recorded and certified.
pub fn delegated(token: &Token, attributes: JoinAttributes, audit: serde_json::Value) -> Verified {
    Verified {
        bot_name: token.spec.bot_name.clone(),
        bot_uid: token.spec.bot_uid.clone(),
        token_name: token.metadata.name.clone(),
        consume: vec![],
        attributes,
        renewable: false,
        audit,
        join_state: String::new(),
        spend: retry::Spend::Nothing,
    }
}
