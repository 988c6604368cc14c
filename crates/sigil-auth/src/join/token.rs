//! Join method `token`: a single-use secret that expires (15 minutes by
//! default). The token's name is the secret; it is stored under its SHA-256
//! and consumed by a compare-and-delete in the same transaction that creates
//! the bot instance, so of any number of racing agents exactly one wins.
//! That transaction also leaves a short-lived spent record, so the winner can
//! be answered again if its answer was lost (retry.rs).

use async_trait::async_trait;
use sigil_proto::v1::JoinInit;
use sigil_store::Op;
use sigil_types::{JoinMethodKind, Token};

use super::retry::{self, Spend};
use super::{Conversation, JoinDenied, JoinMethod, Verified};
use crate::keys;
use crate::state::AuthState;

pub struct TokenJoin;

#[async_trait]
impl JoinMethod for TokenJoin {
    fn name(&self) -> &'static str {
        "token"
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        _conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        let hint = keys::secret_hint(&init.token);
        if init.token.is_empty() {
            return Err(JoinDenied::new("no token presented"));
        }
        let key = keys::token(&init.token);
        let item = state
            .store
            .get(&key)
            .await
            .map_err(|e| JoinDenied::unavailable(format!("token lookup failed: {e}")))?;
        let Some(item) = item else {
            // Used or unknown: only the retry of the join that used it may
            // go on (retry.rs decides, after the bot and instance checks).
            return retry::spent(state, init, &hint).await;
        };
        let token: Token = serde_json::from_slice(&item.value)
            .map_err(|e| JoinDenied::new(format!("token {hint} is undecodable: {e}")))?;
        // The key is a hash of the secret; compare the secret itself in
        // constant time as a second check.
        if aws_lc_rs::constant_time::verify_slices_are_equal(
            token.metadata.name.as_bytes(),
            init.token.as_bytes(),
        )
        .is_err()
        {
            return Err(JoinDenied::new(format!("token {hint} is unknown")));
        }
        if token.spec.join_method != JoinMethodKind::Token {
            return Err(JoinDenied::new(format!(
                "token {hint} is for join method {}, not token",
                token.spec.join_method.as_str()
            )));
        }
        Ok(Verified {
            bot_name: token.spec.bot_name.clone(),
            bot_uid: token.spec.bot_uid.clone(),
            token_name: token.metadata.name.clone(),
            consume: vec![Op::Delete {
                key,
                expected_revision: Some(item.revision),
            }],
            attributes: Default::default(),
            renewable: true,
            audit: serde_json::json!({ "token": hint }),
            join_state: String::new(),
            spend: Spend::Record {
                key: keys::spent_token(&init.token),
                expires: retry::spent_expiry(
                    item.expires.or(token.metadata.expires),
                    time::OffsetDateTime::now_utc(),
                ),
            },
        })
    }
}
