//! Join methods, agent side: how this machine proves what it is. One
//! `JoinProver` per file, chosen by `onboarding.join_method`.

mod token;

use async_trait::async_trait;
use sigil_proto::v1::JoinInit;

use crate::config::Onboarding;

/// The agent half of a join method.
#[async_trait]
pub trait JoinProver: Send + Sync {
    /// Fill in the method's evidence in the first message.
    fn init(&self, init: &mut JoinInit) -> anyhow::Result<()>;
    /// Answer a server challenge (challenge-response methods).
    async fn answer(&self, _challenge: &[u8]) -> anyhow::Result<Vec<u8>> {
        anyhow::bail!("this join method does not expect challenges")
    }
}

/// The prover for the configured method.
pub fn prover(onboarding: &Onboarding) -> anyhow::Result<Box<dyn JoinProver>> {
    match onboarding.join_method.as_str() {
        "token" => Ok(Box::new(token::TokenProver::new(onboarding)?)),
        other => anyhow::bail!("join method {other:?} is not available in this version"),
    }
}
