//! `oidc`: any OIDC issuer's ID token (a cloud's workload identity, a CI
//! system, an internal IdP). Keys come from the issuer's discovery document;
//! `aud` must contain the section's `audience` (default the cluster name);
//! rules test the token's top-level scalar claims.

use std::sync::Arc;

use async_trait::async_trait;
use sigil_proto::v1::JoinInit;
use sigil_types::JoinMethodKind;
use sigil_types::token::oidc_attributes_with;

use super::jwt_verifier::JwksCache;
use super::{Conversation, JoinDenied, JoinMethod, Verified, load_token};
use crate::state::AuthState;

pub struct OidcMethod {
    keys: Arc<JwksCache>,
}

impl OidcMethod {
    pub fn new(keys: Arc<JwksCache>) -> Self {
        OidcMethod { keys }
    }
}

#[async_trait]
impl JoinMethod for OidcMethod {
    fn name(&self) -> &'static str {
        JoinMethodKind::Oidc.as_str()
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        _conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        let token = load_token(state, &init.token, JoinMethodKind::Oidc).await?;
        let section = token
            .spec
            .oidc
            .as_ref()
            .ok_or_else(|| JoinDenied::new("token has no oidc section"))?;
        let audience = section.audience.as_deref().unwrap_or(&state.cluster);
        self.keys
            .verify_join(
                state,
                &init.evidence,
                &token,
                &section.issuer,
                audience,
                |claims| oidc_attributes_with(claims, &token.spec.rule_fields()),
            )
            .await
    }
}
