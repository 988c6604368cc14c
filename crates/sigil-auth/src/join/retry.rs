//! Retrying a `token` join whose answer was lost.
//!
//! A single-use token is consumed in the transaction that creates the bot
//! instance. If the server dies (or the connection breaks) after that commit
//! but before the agent reads the answer, the agent retries — on the same
//! server or another one of the cluster — with the same token and, because it
//! persisted its key before asking (sigil-agent `storage.rs`), the same key.
//! The token is gone by then; without this module the agent would be denied
//! for good although its join succeeded.
//!
//! So the consuming transaction also writes a *spent record* under the
//! SHA-256 of the secret (the secret itself is never stored): the bot, the
//! instance and the SHA-256 of the key that joined. It lives until the token
//! would have expired or [`RETRY_WINDOW`] has passed, whichever is sooner.
//! A join presenting a token that is gone but has a spent record is answered
//! again only if all of these hold:
//! - the presented public key is the key that joined;
//! - the instance still exists, for the same bot (and bot uid), and has never
//!   renewed: generation 1 and its current key is that key;
//! - no lock applies (bot, instance, token, roles), exactly as for a join.
//!
//! Then a new certificate is issued for the same instance at generation 1
//! (no second instance, no generation bump) and audited as `bot.join.retry`.
//! Anything else is the ordinary denial: the client hears "join denied" and
//! cannot tell a spent token from an unknown one; the reason goes to the audit
//! log only.
//!
//! Attacks considered:
//! - A thief with the token but not the private key: the key check fails, and
//!   a certificate would be useless anyway, since it certifies the victim's
//!   key, which the thief cannot use for TLS.
//! - A thief with the token *and* the private key already owns that identity
//!   (it could use the first certificate); a retry gives it nothing more, and
//!   it can neither create a second instance nor move the generation.
//! - A retry after the first renewal is refused: the generation moved on and
//!   the key rotated. A copied generation-1 certificate cannot be re-minted
//!   behind the real agent's back. The instance update is a compare-and-swap
//!   on the revision read, so a retry racing a renewal loses one way or the
//!   other, never both succeed.
//! - A locked bot, instance, token or role is refused, as a join would be.
//! - A removed instance or bot (or a bot re-created under the same name, which
//!   has another uid) is refused: nothing to re-answer.
//! - The record outlives neither the token's expiry nor the retry window, so
//!   it cannot be used to extend a token's life.
//!
//! The lookup is by the SHA-256 of the presented secret, like the token's own;
//! the key fingerprints are compared in constant time (not secret, but cheap).
//!
//! `bound_keypair` joins are answered again the same way (`answer`, same
//! instance, generation 1, `bot.join.retry`); which of its joins is a retry is
//! decided by the record of the token's last exchange (`bound_keypair_retry.rs`,
//! written by [`record`] in the join's transaction), and a join state older than
//! that still locks the token.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sigil_pki::ClientIdentity;
use sigil_proto::v1::{Credentials, JoinInit};
use sigil_store::{Op, StoreError, Txn};
use sigil_types::{Authentication, BotInstance};
use time::OffsetDateTime;
use tonic::Status;

use super::flow::{certify, credentials, denied, identity, merge};
use super::{JoinDenied, Verified};
use crate::audit;
use crate::issuance::{self, BotAuthority};
use crate::keys;
use crate::renewal;
use crate::state::AuthState;

/// How long after a join its answer may be asked for again, at most.
pub const RETRY_WINDOW: Duration = Duration::from_secs(10 * 60);

/// What a join does about a `token`-method secret's spent record.
#[derive(Clone, Debug)]
pub enum Spend {
    /// Nothing (every other method).
    Nothing,
    /// Write the spent record with the new instance.
    Record {
        key: String,
        expires: OffsetDateTime,
    },
    /// The token is spent (or, for bound_keypair, this repeats the last
    /// exchange): only a retry of that join may be answered.
    Retry(SpentToken),
    /// `bound_keypair`: write the token's record with this join as its last
    /// exchange, naming the new instance.
    Exchange(Box<super::bound_keypair_retry::PendingExchange>),
}

/// The spent record, stored under `keys::spent_token`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SpentToken {
    pub bot_name: String,
    pub bot_uid: String,
    pub instance_id: String,
    /// SHA-256 (hex) of the public key that joined.
    pub public_key_sha256: String,
    #[serde(with = "time::serde::rfc3339")]
    pub spent_at: OffsetDateTime,
}

/// When a spent record expires: at the token's own expiry or after the
/// retry window, whichever is sooner.
pub fn spent_expiry(token_expires: Option<OffsetDateTime>, now: OffsetDateTime) -> OffsetDateTime {
    let window = now + RETRY_WINDOW;
    token_expires.map_or(window, |e| e.min(window))
}

/// The op writing the spent record of a join that creates instance `id`
/// with the key `key_fp` (none unless the method asked for one).
pub fn record(
    spend: &Spend,
    id: &ClientIdentity,
    key_fp: &str,
    now: OffsetDateTime,
) -> Result<Option<Op>, Status> {
    let (key, expires) = match spend {
        Spend::Record { key, expires } => (key, expires),
        Spend::Exchange(p) => {
            return super::bound_keypair_retry::record_op(p, id, key_fp).map(Some);
        }
        Spend::Nothing | Spend::Retry(_) => return Ok(None),
    };
    let rec = SpentToken {
        bot_name: id.bot.clone(),
        bot_uid: id.bot_uid.clone(),
        instance_id: id.instance_id.clone(),
        public_key_sha256: key_fp.to_string(),
        spent_at: now,
    };
    // Put, not Create: the token's compare-and-delete in the same
    // transaction is what makes the join single-use.
    Ok(Some(Op::Put {
        key: key.clone(),
        value: serde_json::to_vec(&rec).map_err(|e| Status::internal(e.to_string()))?,
        expires: Some(*expires),
    }))
}

/// The token method found no token: a retry if a spent record exists, else
/// the usual denial (the reason names neither case to the client).
pub async fn spent(state: &AuthState, init: &JoinInit, hint: &str) -> Result<Verified, JoinDenied> {
    let gone = || {
        JoinDenied::new(format!("token {hint} is unknown, used or expired"))
            .with_audit(serde_json::json!({ "token": hint }))
    };
    let item = state
        .store
        .get(&keys::spent_token(&init.token))
        .await
        .map_err(|e| JoinDenied::unavailable(format!("token lookup failed: {e}")))?
        .ok_or_else(gone)?;
    let rec: SpentToken = serde_json::from_slice(&item.value).map_err(|e| {
        JoinDenied::new(format!("spent record of token {hint} is undecodable: {e}"))
    })?;
    Ok(Verified {
        bot_name: rec.bot_name.clone(),
        bot_uid: rec.bot_uid.clone(),
        // For the token lock check, as on the first join.
        token_name: init.token.clone(),
        consume: vec![],
        attributes: Default::default(),
        renewable: true,
        audit: serde_json::json!({ "token": hint }),
        join_state: String::new(),
        spend: Spend::Retry(rec),
    })
}

/// Why the `method` join presenting `key_fp` is not a retry of the one `spent`
/// records, given the instance as stored now; `Ok` if it is.
pub fn check(
    spent: &SpentToken,
    method: &str,
    key_fp: &str,
    inst: Option<&BotInstance>,
) -> Result<(), &'static str> {
    let same_key = |a: &str, b: &str| {
        aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
    };
    if !same_key(&spent.public_key_sha256, key_fp) {
        return Err("presented with another key");
    }
    let Some(inst) = inst else {
        return Err("its instance no longer exists");
    };
    if inst.spec.bot_name != spent.bot_name
        || inst.spec.instance_id != spent.instance_id
        || inst.spec.join_method != method
    {
        return Err("the instance does not match the record");
    }
    if inst.spec.generation != 1 || !same_key(&inst.spec.current_key_sha256, key_fp) {
        return Err("the instance has renewed since");
    }
    Ok(())
}

/// Answer a retry: a new certificate for the recorded instance, generation 1.
pub async fn answer(
    state: &AuthState,
    init: &JoinInit,
    remote: &str,
    spent: SpentToken,
    verified: Verified,
    auth: BotAuthority,
) -> Result<Credentials, Status> {
    // Every refusal keeps the wording of an unknown token, then says why
    // (the audit log only; the client hears "join denied").
    let hint = keys::secret_hint(&init.token);
    let deny = |why: String| {
        let reason = if init.join_method == "token" {
            format!(
                "token {hint} is unknown, used or expired (used by instance {}; not a retry of that join: {why})",
                spent.instance_id
            )
        } else {
            format!(
                "{} token {:?}: not a retry of its last join (instance {}): {why}",
                init.join_method, init.token, spent.instance_id
            )
        };
        denied(state, init, remote, reason, &verified.audit)
    };
    if !init.instance_id.is_empty() {
        return Err(deny("a token join names no instance".into()).await);
    }
    let key_fp = sigil_pki::sha256_hex(&init.public_key_spki);
    let key = keys::bot_instance(&spent.bot_name, &spent.instance_id);
    let item = state
        .store
        .get(&key)
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    let inst = match &item {
        Some(i) => Some(
            serde_json::from_slice::<BotInstance>(&i.value)
                .map_err(|e| Status::internal(format!("undecodable bot instance: {e}")))?,
        ),
        None => None,
    };
    if let Err(why) = check(&spent, &init.join_method, &key_fp, inst.as_ref()) {
        return Err(deny(why.to_string()).await);
    }
    let (Some(item), Some(mut inst)) = (item, inst) else {
        return Err(deny("its instance no longer exists".into()).await);
    };
    let id = identity(state, &verified, &auth, init, &spent.instance_id, 1);
    let (cert, ttl) = match certify(state, init, &verified, &auth, &id)? {
        Ok(issued) => issued,
        Err(reason) => return Err(deny(reason).await),
    };
    let now = OffsetDateTime::now_utc();
    inst.spec.push_authentication(
        Authentication {
            time: now,
            method: init.join_method.clone(),
            remote_addr: remote.to_string(),
            public_key_sha256: key_fp.clone(),
            generation: 1,
            attributes: [("retry".to_string(), "true".to_string())].into(),
        },
        sigil_types::HISTORY_CAP,
    );
    if let Some(hb) = &init.heartbeat {
        inst.spec
            .push_heartbeat(renewal::heartbeat(hb, now), sigil_types::HISTORY_CAP);
    }
    // Compare-and-swap on the revision checked above: a renewal in between
    // makes this retry fail rather than certify a superseded generation.
    let ops = vec![Op::Update {
        key,
        value: serde_json::to_vec(&inst).map_err(|e| Status::internal(e.to_string()))?,
        expires: state.instance_expiry(cert.not_after),
        expected_revision: Some(item.revision),
    }];
    let mut fields = serde_json::json!({
        "method": init.join_method, "bot": id.bot, "bot_instance": id.instance_id,
        "generation": 1, "remote_addr": remote, "public_key_sha256": key_fp,
        "roles": auth.roles, "first_join_at": spent.spent_at.unix_timestamp(),
    });
    merge(&mut fields, &verified.audit);
    let txn = Txn {
        ops: ops.clone(),
        audit: vec![
            audit::event(audit::JOIN_RETRY, fields),
            issuance::x509_issued_event(&id, &cert, ttl, "client"),
        ],
    };
    match state.store.commit(txn).await {
        Ok(revs) => state.cache.apply_committed(&ops, &revs),
        Err(StoreError::Backend(e)) => {
            tracing::error!(error = %e, "storage failed during a join retry");
            return Err(Status::unavailable("storage unavailable; retry"));
        }
        Err(e) => {
            return Err(deny(format!("the instance changed meanwhile: {e}")).await);
        }
    }
    metrics::counter!("sigil_joins_total", "result" => "retry").increment(1);
    metrics::counter!("sigil_certs_issued_total", "kind" => "x509").increment(1);
    tracing::info!(bot = %id.bot, instance = %id.instance_id, "token join answered again (retry)");
    Ok(credentials(state, &id, cert, &auth, &verified))
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_types::{BotInstanceSpec, Metadata};

    fn rec() -> SpentToken {
        SpentToken {
            bot_name: "b".into(),
            bot_uid: "u".into(),
            instance_id: "i".into(),
            public_key_sha256: "k1".into(),
            spent_at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn inst(generation: u64, key: &str) -> BotInstance {
        BotInstance::new(
            Metadata::named("i"),
            BotInstanceSpec {
                bot_name: "b".into(),
                instance_id: "i".into(),
                join_method: "token".into(),
                generation,
                current_key_sha256: key.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn only_the_same_key_on_an_unrenewed_instance_is_a_retry() {
        assert_eq!(check(&rec(), "token", "k1", Some(&inst(1, "k1"))), Ok(()));
        // A thief with the token but another key.
        assert!(check(&rec(), "token", "k2", Some(&inst(1, "k1"))).is_err());
        // The instance renewed: generation moved on, key rotated.
        assert!(check(&rec(), "token", "k1", Some(&inst(2, "k2"))).is_err());
        assert!(check(&rec(), "token", "k1", Some(&inst(2, "k1"))).is_err());
        assert!(check(&rec(), "token", "k1", Some(&inst(1, "k2"))).is_err());
        // Removed.
        assert!(check(&rec(), "token", "k1", None).is_err());
        // Another bot's instance of the same id, or another method.
        let mut other = inst(1, "k1");
        other.spec.bot_name = "c".into();
        assert!(check(&rec(), "token", "k1", Some(&other)).is_err());
        let mut other = inst(1, "k1");
        other.spec.join_method = "bound_keypair".into();
        assert!(check(&rec(), "token", "k1", Some(&other)).is_err());
    }

    #[test]
    fn the_record_expires_with_the_token_or_the_window() {
        let now = OffsetDateTime::UNIX_EPOCH + Duration::from_secs(1000);
        let soon = now + Duration::from_secs(60);
        let late = now + Duration::from_secs(3600);
        assert_eq!(spent_expiry(Some(soon), now), soon);
        assert_eq!(spent_expiry(Some(late), now), now + RETRY_WINDOW);
        assert_eq!(spent_expiry(None, now), now + RETRY_WINDOW);
    }

    #[test]
    fn the_record_holds_no_secret_and_only_a_join_that_consumes_writes_one() {
        let id = ClientIdentity {
            cluster: "c".into(),
            bot: "b".into(),
            bot_uid: "u".into(),
            instance_id: "i".into(),
            roles: vec![],
            generation: 1,
            renewable: true,
            delegated: false,
            join_method: "token".into(),
            logins: vec![],
            join_attributes: Default::default(),
        };
        let now = OffsetDateTime::UNIX_EPOCH;
        assert!(record(&Spend::Nothing, &id, "k1", now).unwrap().is_none());
        let spend = Spend::Record {
            key: keys::spent_token("the-secret"),
            expires: now + RETRY_WINDOW,
        };
        let Some(Op::Put {
            key,
            value,
            expires,
        }) = record(&spend, &id, "k1", now).unwrap()
        else {
            panic!("a Put of the spent record");
        };
        assert!(!key.contains("the-secret") && key.starts_with(keys::SPENT_TOKENS));
        assert_eq!(key, keys::spent_token(&keys::token_ref("the-secret")));
        assert!(!String::from_utf8_lossy(&value).contains("the-secret"));
        assert_eq!(expires, Some(now + RETRY_WINDOW));
        let back: SpentToken = serde_json::from_slice(&value).unwrap();
        assert_eq!(back.instance_id, "i");
        assert_eq!(back.public_key_sha256, "k1");
    }
}
