//! `github`: a GitHub Actions job proves itself with its OIDC ID token
//! (`ACTIONS_ID_TOKEN_REQUEST_URL`, audience = the cluster name). Keys come
//! from discovery at github.com's issuer, an Enterprise Cloud slug issuer or
//! a GitHub Enterprise Server (`enterprise_server_host`).

use std::sync::Arc;

use async_trait::async_trait;
use sigil_proto::v1::JoinInit;
use sigil_types::JoinMethodKind;
use sigil_types::token::github_attributes;

use super::jwt_verifier::JwksCache;
use super::{Conversation, JoinDenied, JoinMethod, Verified, load_token};
use crate::state::AuthState;

pub struct GithubMethod {
    keys: Arc<JwksCache>,
}

impl GithubMethod {
    pub fn new(keys: Arc<JwksCache>) -> Self {
        GithubMethod { keys }
    }
}

#[async_trait]
impl JoinMethod for GithubMethod {
    fn name(&self) -> &'static str {
        JoinMethodKind::Github.as_str()
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        _conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        let token = load_token(state, &init.token, JoinMethodKind::Github).await?;
        let section = token
            .spec
            .github
            .as_ref()
            .ok_or_else(|| JoinDenied::new("token has no github section"))?;
        let issuer = section.issuer();
        self.keys
            .verify_join(
                state,
                &init.evidence,
                &token,
                &issuer,
                &state.cluster,
                github_attributes,
            )
            .await
    }
}
