//! Retrying a `bound_keypair` join whose answer was lost.
//!
//! Every bound_keypair join advances the token's sequence and issues a new
//! signed join state; the agent must show that state at its next join, and a
//! state older than the last one issued means two machines hold the key pair
//! (a copy): the token is locked. If the server dies (or the connection
//! breaks, or the agent crashes) after the join committed but before the agent
//! saved the answer, the agent still holds the *previous* state, and without
//! this module its next join would read as a copy and lock the token — a false
//! theft lockout of a machine that did nothing wrong.
//!
//! So the join's transaction also records *the last exchange* in the token's
//! state (`KeyState::last_exchange`, the same record and transaction that
//! advance the sequence): the SHA-256 of the join state it was shown, the key
//! that presented it, the SHA-256 of the TLS key the new instance was issued
//! to, that instance, and the join state it issued. The agent persists its
//! TLS key before sending a join (sigil-agent `storage.rs`), and a rotation's
//! new key before answering (sigil-agent `join/bound_keypair.rs`), so after a
//! crash or a lost answer it presents the very same request again.
//!
//! A join is a retry of the last exchange, and is answered again, only if all
//! of these hold:
//! - it presents the same TLS key as the last exchange;
//! - it presents the join state that exchange was shown (the answer was lost)
//!   or the one it issued (the agent saved the state but not the credential);
//! - it presents the key that exchange was proven with, or the key bound by
//!   it (after a rotation), and proves possession of the key bound *now* (the
//!   challenge names it: after a rotation the agent signs with its new key);
//! - the instance that exchange created still exists, for the same bot, and
//!   has never renewed: generation 1 and its current key is that TLS key;
//! - no lock applies (bot, instance, token, roles), exactly as for a join.
//!
//! Then a new certificate is issued for the same instance at generation 1,
//! with the same join state (no new instance, no sequence bump, no recovery
//! counted), audited as `bot.join.retry` (sigil-auth `join/retry.rs` answers
//! it, as it answers a `token` join's retry).
//!
//! What still locks the token (a true copy: two holders diverging):
//! - a join state older than the last exchange's (the last exchange was made
//!   by the other holder with the newer state);
//! - a retry of the last exchange after its instance renewed: the next
//!   exchange of that identity had started, so the holder of the answer is
//!   alive and this is another machine with the same files;
//! - the state the last exchange was shown, presented with another TLS key:
//!   a copy of the storage made at rest (the agent clears its pending key
//!   once the answer is saved), i.e. two machines.
//!
//! Attacks considered:
//! - A thief with the bound key and an old join state but not the pending TLS
//!   key: not a retry (another TLS key); the stale state locks, as before.
//! - A thief with a copy of the whole storage made mid-join (bound key, join
//!   state and pending TLS key): the retry gives it a certificate for the TLS
//!   key it already holds, for the instance the real agent has too; the first
//!   renewal by either moves the generation and the other's renewal is a
//!   generation mismatch that locks the instance (renewal.rs). It can neither
//!   create a second instance nor advance the sequence without being caught.
//! - A thief with the pre-rotation key only: a retry after a rotation must be
//!   proven with the new key, which the thief does not have.
//! - A replayed answer: every proof signs a fresh challenge.
//! - A retry racing a renewal of the instance: the instance update is a
//!   compare-and-swap on the revision read, so one of them loses.
//! - A removed instance is not answered again (nothing to re-answer); the
//!   join is denied without a lock, and a person resets the token.
//! - A token re-created with another onboarding starts afresh (its record is
//!   reset), and so does its last exchange.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sigil_pki::ClientIdentity;
use sigil_store::Op;
use sigil_types::{BotInstance, Token};
use time::OffsetDateTime;
use tonic::Status;

use super::bound_keypair::{BoundKey, lock_token, prove};
use super::retry::{self, Spend, SpentToken};
use super::{Conversation, JoinDenied, Verified};
use crate::keys;
use crate::state::AuthState;

/// The server's record per token (`keys::bound_keypair_state`).
#[derive(Serialize, Deserialize, Default, Clone, Debug)]
pub struct KeyState {
    pub bound_public_key: Option<String>,
    pub sequence: u64,
    pub recoveries: u32,
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_rotated_at: Option<OffsetDateTime>,
    /// SHA-256 of the token's onboarding section when the key was bound: a
    /// token re-created with another onboarding starts afresh.
    #[serde(default)]
    pub onboarding_sha256: String,
    /// SHA-256 (hex) of the join state issued last. A presented state is checked
    /// against it, not against the JWT CA's keys: those rotate, and a genuine state
    /// signed before a rotation must not read as a copy and lock the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join_state_sha256: Option<String>,
    /// The join that issued the current state, to answer again if its answer
    /// was lost (module doc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_exchange: Option<LastExchange>,
}

/// The last join of a token: what it was asked and what it answered.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LastExchange {
    /// SHA-256 (hex) of the join state presented ("" for a first join).
    pub presented_state_sha256: String,
    /// The key that presented it (before a rotation in that join).
    pub presented_key: String,
    /// SHA-256 (hex) of the TLS public key the instance was issued to.
    pub tls_key_sha256: String,
    pub bot_name: String,
    pub bot_uid: String,
    pub instance_id: String,
    /// The join state issued, sent again verbatim (it is compared by hash, so
    /// one signed by a JWT CA rotated out since is still the current one).
    pub join_state: String,
    /// The join attributes certified.
    pub attributes: BTreeMap<String, String>,
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
}

/// A join about to commit: its record, completed with the instance id when the
/// flow creates the instance (`retry::record`), in the same transaction.
#[derive(Clone, Debug)]
pub struct PendingExchange {
    pub store_key: String,
    /// The record's revision as read (compare-and-swap), None if new.
    pub revision: Option<i64>,
    pub rec: KeyState,
    /// `last_exchange` without bot and instance.
    pub last: LastExchange,
}

fn same(a: &str, b: &str) -> bool {
    aws_lc_rs::constant_time::verify_slices_are_equal(a.as_bytes(), b.as_bytes()).is_ok()
}

/// The last exchange, if this join repeats it (module doc): the same TLS key,
/// the state it was shown or issued, a key of that exchange.
pub fn repeated<'a>(
    rec: &'a KeyState,
    tls_key_sha256: &str,
    presented_state_sha256: &str,
    presented_key: &str,
) -> Option<&'a LastExchange> {
    let last = rec.last_exchange.as_ref()?;
    let issued = rec.join_state_sha256.as_deref().unwrap_or_default();
    let state_ok = same(&last.presented_state_sha256, presented_state_sha256)
        || same(issued, presented_state_sha256);
    let key_ok = last.presented_key == presented_key
        || rec.bound_public_key.as_deref() == Some(presented_key);
    (same(&last.tls_key_sha256, tls_key_sha256) && state_ok && key_ok).then_some(last)
}

/// What the instance of the last exchange says about a retry of it.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    Retry,
    /// Not answerable, but not a copy either (the instance was removed).
    Deny(&'static str),
    /// A copy: lock the token.
    Copy(&'static str),
}

pub fn verdict(last: &LastExchange, inst: Option<&BotInstance>) -> Verdict {
    let spent = spent_of(last);
    match retry::check(&spent, "bound_keypair", &last.tls_key_sha256, inst) {
        Ok(()) => Verdict::Retry,
        Err(why) if inst.is_none() => Verdict::Deny(why),
        Err(why) => Verdict::Copy(why),
    }
}

fn spent_of(last: &LastExchange) -> SpentToken {
    SpentToken {
        bot_name: last.bot_name.clone(),
        bot_uid: last.bot_uid.clone(),
        instance_id: last.instance_id.clone(),
        public_key_sha256: last.tls_key_sha256.clone(),
        spent_at: last.at,
    }
}

/// Prove and classify a join that repeats the last exchange: a retry to
/// answer again, or a denial (locking the token for a copy).
pub async fn verify_retry(
    state: &AuthState,
    conv: &mut dyn Conversation,
    token: &Token,
    rec: &KeyState,
    last: LastExchange,
    presented: &BoundKey,
    mut audit: serde_json::Value,
) -> Result<Verified, JoinDenied> {
    let name = token.metadata.name.clone();
    let deny = |reason: String, audit: &serde_json::Value| {
        JoinDenied::new(reason).with_audit(audit.clone())
    };
    let bound = BoundKey::parse(rec.bound_public_key.as_deref().unwrap_or_default())
        .map_err(|e| deny(format!("stored bound key: {e}"), &audit))?;
    // The key bound now, named in the challenge when the agent presented the
    // pre-rotation one (it holds the new key unconfirmed).
    prove(
        conv,
        token,
        &state.cluster,
        &bound,
        false,
        bound.line != presented.line,
    )
    .await
    .map_err(|mut d| {
        if d.audit.is_null() {
            d.audit = audit.clone();
        }
        d
    })?;
    audit["retry"] = true.into();
    audit["bot_instance"] = last.instance_id.clone().into();
    audit["sequence"] = rec.sequence.into();
    let item = state
        .store
        .get(&keys::bot_instance(&last.bot_name, &last.instance_id))
        .await
        .map_err(|e| JoinDenied::unavailable(format!("bot instance lookup: {e}")))?;
    let inst = item
        .map(|i| serde_json::from_slice::<BotInstance>(&i.value))
        .transpose()
        .map_err(|e| deny(format!("undecodable bot instance: {e}"), &audit))?;
    match verdict(&last, inst.as_ref()) {
        Verdict::Retry => {}
        Verdict::Deny(why) => {
            return Err(deny(
                format!(
                    "a retry of the last join, but {why}: reset the token (re-create it) to join again"
                ),
                &audit,
            ));
        }
        Verdict::Copy(why) => {
            let why = format!("a retry of the last join, but {why}");
            let lock = lock_token(state, &name, &why).await;
            audit["lock"] = lock.into();
            return Err(deny(format!("{why}; token locked"), &audit));
        }
    }
    Ok(Verified {
        bot_name: last.bot_name.clone(),
        bot_uid: last.bot_uid.clone(),
        token_name: name,
        consume: vec![],
        attributes: last.attributes.clone(),
        renewable: true,
        audit,
        join_state: last.join_state.clone(),
        spend: Spend::Retry(spent_of(&last)),
    })
}

/// The op writing the token's record with the join's last exchange, for the
/// instance `id` issued to the TLS key `key_fp`.
pub fn record_op(p: &PendingExchange, id: &ClientIdentity, key_fp: &str) -> Result<Op, Status> {
    let mut rec = p.rec.clone();
    rec.last_exchange = Some(LastExchange {
        tls_key_sha256: key_fp.to_string(),
        bot_name: id.bot.clone(),
        bot_uid: id.bot_uid.clone(),
        instance_id: id.instance_id.clone(),
        ..p.last.clone()
    });
    let value = serde_json::to_vec(&rec).map_err(|e| Status::internal(e.to_string()))?;
    Ok(match p.revision {
        None => Op::Create {
            key: p.store_key.clone(),
            value,
            expires: None,
        },
        Some(r) => Op::Update {
            key: p.store_key.clone(),
            value,
            expires: None,
            expected_revision: Some(r),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use sigil_types::{BotInstanceSpec, Metadata};

    fn last() -> LastExchange {
        LastExchange {
            presented_state_sha256: "s1".into(),
            presented_key: "k-old".into(),
            tls_key_sha256: "t1".into(),
            bot_name: "b".into(),
            bot_uid: "u".into(),
            instance_id: "i".into(),
            join_state: "state-2".into(),
            attributes: Default::default(),
            at: OffsetDateTime::UNIX_EPOCH,
        }
    }

    fn rec() -> KeyState {
        KeyState {
            bound_public_key: Some("k-new".into()),
            sequence: 2,
            join_state_sha256: Some("s2".into()),
            last_exchange: Some(last()),
            ..Default::default()
        }
    }

    fn inst(generation: u64, key: &str) -> BotInstance {
        BotInstance::new(
            Metadata::named("i"),
            BotInstanceSpec {
                bot_name: "b".into(),
                instance_id: "i".into(),
                join_method: "bound_keypair".into(),
                generation,
                current_key_sha256: key.into(),
                ..Default::default()
            },
        )
    }

    #[test]
    fn only_the_same_request_repeats_the_last_exchange() {
        let r = rec();
        // Lost answer: the state it was shown, the old key (rotation unconfirmed) or the new.
        assert!(repeated(&r, "t1", "s1", "k-old").is_some());
        assert!(repeated(&r, "t1", "s1", "k-new").is_some());
        // State saved, credential not: the state it issued.
        assert!(repeated(&r, "t1", "s2", "k-new").is_some());
        // Another TLS key: a copy made at rest, or a later join.
        assert!(repeated(&r, "t2", "s1", "k-old").is_none());
        assert!(repeated(&r, "t2", "s2", "k-new").is_none());
        // An older state, or a key of neither.
        assert!(repeated(&r, "t1", "s0", "k-old").is_none());
        assert!(repeated(&r, "t1", "s1", "k-other").is_none());
        // No exchange recorded (a record from before this was kept).
        let old = KeyState {
            last_exchange: None,
            ..rec()
        };
        assert!(repeated(&old, "t1", "s1", "k-old").is_none());
    }

    #[test]
    fn a_renewed_instance_means_a_copy_and_a_removed_one_a_plain_denial() {
        let l = last();
        assert_eq!(verdict(&l, Some(&inst(1, "t1"))), Verdict::Retry);
        assert!(matches!(
            verdict(&l, Some(&inst(2, "t9"))),
            Verdict::Copy(_)
        ));
        assert!(matches!(
            verdict(&l, Some(&inst(1, "t9"))),
            Verdict::Copy(_)
        ));
        assert!(matches!(verdict(&l, None), Verdict::Deny(_)));
        let mut token_inst = inst(1, "t1");
        token_inst.spec.join_method = "token".into();
        assert!(matches!(verdict(&l, Some(&token_inst)), Verdict::Copy(_)));
    }

    #[test]
    fn the_record_carries_the_instance_and_reads_back() {
        let p = PendingExchange {
            store_key: keys::bound_keypair_state("tok"),
            revision: Some(7),
            rec: KeyState {
                last_exchange: None,
                ..rec()
            },
            last: LastExchange {
                bot_name: String::new(),
                instance_id: String::new(),
                ..last()
            },
        };
        let id = ClientIdentity {
            cluster: "c".into(),
            bot: "b".into(),
            bot_uid: "u".into(),
            instance_id: "i-42".into(),
            roles: vec![],
            generation: 1,
            renewable: true,
            delegated: false,
            join_method: "bound_keypair".into(),
            logins: vec![],
            join_attributes: Default::default(),
        };
        let Op::Update {
            value,
            expected_revision,
            ..
        } = record_op(&p, &id, "t7").unwrap()
        else {
            panic!("an update of the record");
        };
        assert_eq!(expected_revision, Some(7));
        let back: KeyState = serde_json::from_slice(&value).unwrap();
        let l = back.last_exchange.unwrap();
        assert_eq!(
            (l.instance_id.as_str(), l.tls_key_sha256.as_str()),
            ("i-42", "t7")
        );
        assert_eq!(l.bot_name, "b");
        // A record written before last_exchange existed still reads.
        let old: KeyState =
            serde_json::from_str(r#"{"bound_public_key":null,"sequence":1,"recoveries":1}"#)
                .unwrap();
        assert!(old.last_exchange.is_none());
    }
}
