//! Join method `token`: present the single-use secret.

use anyhow::Context;
use sigil_proto::v1::JoinInit;

use super::{JoinProver, ProverContext};
use crate::config::Onboarding;

pub struct TokenProver {
    token: String,
}

impl TokenProver {
    pub fn new(o: &Onboarding) -> anyhow::Result<Self> {
        let token = o.token()?.filter(|t| !t.is_empty()).context(
            "no credential in storage and no join token: set onboarding.token_path (--token-path) to a file holding the token `sigil bots add` printed",
        )?;
        Ok(TokenProver { token })
    }
}

#[async_trait::async_trait]
impl JoinProver for TokenProver {
    async fn init(&self, _ctx: &ProverContext, init: &mut JoinInit) -> anyhow::Result<()> {
        init.token = self.token.clone();
        Ok(())
    }
}
