//! `gitlab`: a GitLab CI job proves itself with an ID token from `id_tokens:`
//! in `.gitlab-ci.yml` (`aud` = the cluster name). Keys come from discovery
//! at gitlab.com or a self-hosted GitLab (`domain`).

use std::sync::Arc;

use async_trait::async_trait;
use sigil_proto::v1::JoinInit;
use sigil_types::JoinMethodKind;
use sigil_types::token::gitlab_attributes;

use super::jwt_verifier::JwksCache;
use super::{Conversation, JoinDenied, JoinMethod, Verified, load_token};
use crate::state::AuthState;

pub struct GitlabMethod {
    keys: Arc<JwksCache>,
}

impl GitlabMethod {
    pub fn new(keys: Arc<JwksCache>) -> Self {
        GitlabMethod { keys }
    }
}

#[async_trait]
impl JoinMethod for GitlabMethod {
    fn name(&self) -> &'static str {
        JoinMethodKind::Gitlab.as_str()
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        _conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        let token = load_token(state, &init.token, JoinMethodKind::Gitlab).await?;
        let section = token
            .spec
            .gitlab
            .as_ref()
            .ok_or_else(|| JoinDenied::new("token has no gitlab section"))?;
        let issuer = section.issuer();
        self.keys
            .verify_join(
                state,
                &init.evidence,
                &token,
                &issuer,
                &state.cluster,
                gitlab_attributes,
            )
            .await
    }
}
