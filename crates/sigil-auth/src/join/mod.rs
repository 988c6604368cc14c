//! Join methods: the server side of how a machine proves what it is. Each
//! method is one `JoinMethod` implementation in its own file, registered in
//! [`JoinRegistry::standard`]; the join stream and everything after the proof
//! (instance creation, issuance, audit) is shared.

mod flow;
mod token;

pub use flow::join;

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use sigil_proto::v1::JoinInit;
use sigil_store::Op;

use crate::state::AuthState;

/// Why a join was refused. `reason` goes to the audit log only; the client
/// always hears "join denied", never whether a token exists.
#[derive(Debug)]
pub struct JoinDenied {
    pub reason: String,
    /// The evidence could not be checked (storage, an unreachable issuer):
    /// the client hears "unavailable" and retries, nothing is audited as a denial.
    pub unavailable: bool,
    /// Audit-safe fields: the claims that were checked, why no rule matched.
    pub audit: serde_json::Value,
}

impl JoinDenied {
    pub fn new(reason: impl Into<String>) -> Self {
        JoinDenied {
            reason: reason.into(),
            unavailable: false,
            audit: serde_json::Value::Null,
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
        let all: Vec<Arc<dyn JoinMethod>> = vec![Arc::new(token::TokenJoin)];
        JoinRegistry {
            methods: all.into_iter().map(|m| (m.name(), m)).collect(),
        }
    }

    pub fn get(&self, name: &str) -> Option<Arc<dyn JoinMethod>> {
        self.methods.get(name).cloned()
    }
}
