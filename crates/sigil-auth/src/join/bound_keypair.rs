//! Join method `bound_keypair`: a key pair bound to a named token replaces a
//! long-lived secret for VMs and bare metal. The identity it yields is
//! renewable; a new join is a *recovery* (the agent lost its credential) and
//! is limited by `recovery.limit`.
//!
//! Wire formats (agent side in sigil-agent's `join/bound_keypair.rs`):
//! - evidence: JSON `{"public_key": "<OpenSSH line>", "join_state": "<JWT or
//!   empty>", "registration_secret": "<only when configured>"}`;
//! - challenge: JSON `{"nonce": b64url(32 random bytes), "token", "cluster",
//!   "issued_at"}` (a rotation challenge adds `"rotate": true`);
//! - answer: JSON `{"signature": b64url}` (a rotation answer adds
//!   `"new_public_key": "<OpenSSH line>"`) where the signature covers
//!   [`CHALLENGE_PREFIX`] || the challenge bytes exactly as sent: raw 64 bytes
//!   for ssh-ed25519, ASN.1 DER `ECDSA-Sig-Value` for ecdsa-sha2-nistp256;
//! - join state: an ES256 JWT signed by the cluster's JWT CA with `typ`,
//!   `token`, `seq`, `public_key_sha256`; `sub` is a reserved SPIFFE ID and
//!   `iss` is absent, which no workload JWT-SVID ever is.
//!
//! A join whose answer was lost (a crash, a broken connection) is answered
//! again rather than read as a copy: see `bound_keypair_retry.rs`, which also
//! lists what still locks the token.

use std::time::Duration;

use async_trait::async_trait;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_ASN1, ED25519, UnparsedPublicKey, VerificationAlgorithm,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use serde::Deserialize;
use sigil_proto::v1::JoinInit;
use sigil_store::{Op, Txn};
use sigil_types::{BoundKeypairJoin, JoinMethodKind, Lock, LockSpec, LockTarget, Metadata, Token};
use ssh_key::public::{EcdsaPublicKey, KeyData};
use time::OffsetDateTime;

use super::bound_keypair_retry::{self as exchange, KeyState, LastExchange, PendingExchange};
use super::{Conversation, JoinDenied, JoinMethod, Verified, load_token};
use crate::audit;
use crate::keys;
use crate::state::AuthState;

/// Domain separation: what the agent signs starts with this.
pub const CHALLENGE_PREFIX: &[u8] = b"sigil bound_keypair challenge v1\n";
/// `typ` claim and audience of a join state.
const JOIN_STATE_TYP: &str = "sigil-bound-keypair-join-state";
/// Evidence, answers and keys larger than this are refused unparsed.
const MAX_INPUT: usize = 16 * 1024;

pub struct BoundKeypairJoinMethod;

/// What the agent sends in `JoinInit.evidence`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Evidence {
    public_key: String,
    #[serde(default)]
    join_state: String,
    #[serde(default)]
    registration_secret: Option<String>,
}

/// The agent's answer to a challenge.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    signature: String,
    #[serde(default)]
    new_public_key: Option<String>,
}

/// A parsed OpenSSH public key of a supported type.
#[derive(Debug, Clone)]
pub struct BoundKey {
    /// `<alg> <base64 blob>` without comment: the form stored and compared.
    pub line: String,
    /// SHA-256 hex of the SSH wire blob.
    pub sha256: String,
    alg: &'static dyn VerificationAlgorithm,
    raw: Vec<u8>,
}

impl BoundKey {
    /// Parse an OpenSSH public key line; only ssh-ed25519 and
    /// ecdsa-sha2-nistp256 are accepted.
    pub fn parse(line: &str) -> Result<BoundKey, String> {
        if line.len() > MAX_INPUT {
            return Err("public key is too long".into());
        }
        let key = ssh_key::PublicKey::from_openssh(line.trim())
            .map_err(|e| format!("not an OpenSSH public key: {e}"))?;
        let (alg, raw): (&'static dyn VerificationAlgorithm, Vec<u8>) = match key.key_data() {
            KeyData::Ed25519(pk) => (&ED25519, pk.0.to_vec()),
            KeyData::Ecdsa(EcdsaPublicKey::NistP256(p)) => {
                (&ECDSA_P256_SHA256_ASN1, p.as_bytes().to_vec())
            }
            _ => return Err("only ssh-ed25519 and ecdsa-sha2-nistp256 keys are accepted".into()),
        };
        let bare = ssh_key::PublicKey::new(key.key_data().clone(), "");
        let line = bare
            .to_openssh()
            .map_err(|e| format!("public key does not encode: {e}"))?;
        let blob = bare
            .to_bytes()
            .map_err(|e| format!("public key does not encode: {e}"))?;
        Ok(BoundKey {
            line,
            sha256: sigil_pki::sha256_hex(&blob),
            alg,
            raw,
        })
    }

    /// Check `signature` over [`CHALLENGE_PREFIX`] || `challenge`.
    pub fn verify(&self, challenge: &[u8], signature: &[u8]) -> Result<(), String> {
        let mut msg = CHALLENGE_PREFIX.to_vec();
        msg.extend_from_slice(challenge);
        UnparsedPublicKey::new(self.alg, &self.raw)
            .verify(&msg, signature)
            .map_err(|_| "the signature does not verify with the bound key".to_string())
    }
}

/// A fresh challenge payload; `key` names the key to sign with (a retry after a
/// rotation, whose agent holds the new key unconfirmed).
fn challenge_payload(
    token: &str,
    cluster: &str,
    rotate: bool,
    key: Option<&str>,
) -> Result<Vec<u8>, JoinDenied> {
    let mut nonce = [0u8; 32];
    aws_lc_rs::rand::fill(&mut nonce)
        .map_err(|_| JoinDenied::unavailable("no randomness for a challenge"))?;
    let mut v = serde_json::json!({
        "nonce": B64URL.encode(nonce), "token": token, "cluster": cluster,
        "issued_at": OffsetDateTime::now_utc().unix_timestamp(),
    });
    if rotate {
        v["rotate"] = serde_json::Value::Bool(true);
    }
    if let Some(k) = key {
        v["key"] = k.into();
    }
    serde_json::to_vec(&v).map_err(|e| JoinDenied::new(format!("encoding a challenge: {e}")))
}

/// Decode an answer, requiring `new_public_key` exactly when rotating.
fn parse_answer(bytes: &[u8], rotate: bool) -> Result<(Vec<u8>, Option<String>), String> {
    if bytes.len() > MAX_INPUT {
        return Err("answer is too long".into());
    }
    let a: Answer =
        serde_json::from_slice(bytes).map_err(|e| format!("undecodable answer: {e}"))?;
    let sig = B64URL
        .decode(a.signature.as_bytes())
        .map_err(|_| "answer signature is not base64url".to_string())?;
    if rotate != a.new_public_key.is_some() {
        return Err("answer does not match the challenge kind".into());
    }
    Ok((sig, a.new_public_key))
}

/// The reserved SPIFFE ID a token's join states are issued for.
fn join_state_sub(cluster: &str, token: &str) -> String {
    format!(
        "spiffe://{cluster}/_sigil/bound-keypair/{}",
        sigil_pki::sha256_hex(token.as_bytes())
    )
}

/// Sign a join state valid until the JWT CA expires (it is checked against
/// the stored sequence, not against a clock).
fn sign_join_state(
    state: &AuthState,
    token: &str,
    seq: u64,
    key: &BoundKey,
) -> Result<String, JoinDenied> {
    let fail = |e: String| JoinDenied::unavailable(format!("signing the join state: {e}"));
    let cas = state.cas();
    let (_, cert) = x509_parser::parse_x509_certificate(cas.jwt.signer.cert_der())
        .map_err(|e| fail(e.to_string()))?;
    let remaining =
        cert.validity().not_after.timestamp() - OffsetDateTime::now_utc().unix_timestamp() - 60;
    let ttl = u64::try_from(remaining).map_err(|_| fail("the JWT CA has expired".into()))?;
    let mut extra = serde_json::Map::new();
    extra.insert("typ".into(), JOIN_STATE_TYP.into());
    extra.insert("token".into(), token.into());
    extra.insert("seq".into(), seq.into());
    extra.insert("public_key_sha256".into(), key.sha256.clone().into());
    let claims = sigil_pki::JwtSvidClaims {
        sub: join_state_sub(&state.cluster, token),
        aud: vec![JOIN_STATE_TYP.to_string()],
        iss: None,
        ttl: Duration::from_secs(ttl),
        extra,
    };
    cas.jwt
        .signer
        .sign_jwt_svid(&claims)
        .map(|s| s.token)
        .map_err(|e| fail(e.to_string()))
}

/// The sequence a presented join state carries, if it is genuine and for
/// this token.
fn check_join_state(state: &AuthState, token: &str, presented: &str) -> Result<u64, String> {
    if presented.is_empty() {
        return Err("no join state presented".into());
    }
    // Every trusted JWT key: a state signed before a rotation still verifies during it.
    let keys: Vec<Vec<u8>> = state
        .cas()
        .jwt
        .trusted
        .iter()
        .map(|c| c.public_key_spki_der())
        .collect();
    let jwks = sigil_pki::jwks_document(&keys).map_err(|e| e.to_string())?;
    let v = sigil_pki::verify_jwt_svid(presented, &jwks, &state.cluster, JOIN_STATE_TYP)
        .map_err(|e| format!("join state does not verify: {e}"))?;
    let claim = |n: &str| v.claims.get(n).and_then(|c| c.as_str());
    if claim("typ") != Some(JOIN_STATE_TYP)
        || v.claims.contains_key("iss")
        || v.spiffe_id != join_state_sub(&state.cluster, token)
    {
        return Err("join state is not a bound_keypair join state".into());
    }
    if claim("token") != Some(token) {
        return Err("join state is for another token".into());
    }
    v.claims
        .get("seq")
        .and_then(|s| s.as_u64())
        .ok_or_else(|| "join state has no sequence".into())
}

/// Why a presented join state is not the current one, for the denial and the
/// audit event (a state signed by a key no longer trusted reads as not verifying).
fn describe_stale(state: &AuthState, token: &str, presented: &str, current: u64) -> String {
    match check_join_state(state, token, presented) {
        Ok(s) => format!("stale join state: presented sequence {s}, current {current}"),
        Err(e) => format!("stale join state: {e}"),
    }
}

/// The key pair was copied: lock the token so neither copy joins again
/// until a person looks. Committed on its own (the join itself is denied).
pub(super) async fn lock_token(state: &AuthState, token: &str, why: &str) -> String {
    let lock_id = uuid::Uuid::new_v4().to_string();
    let message = format!(
        "bound_keypair: {why}; the key pair of this token was used by two machines (copied?)"
    );
    let lock = Lock::new(
        Metadata::named(lock_id.clone()),
        LockSpec {
            target: LockTarget::Token(keys::token_ref(token)),
            message: message.clone(),
            created_by: "sigil-auth".to_string(),
            created_at: Some(OffsetDateTime::now_utc()),
        },
    );
    let Ok(value) = serde_json::to_vec(&lock) else {
        tracing::error!("encoding the bound_keypair lock failed");
        return lock_id;
    };
    let ops = vec![Op::Create {
        key: keys::lock(&lock_id),
        value,
        expires: None,
    }];
    let txn = Txn {
        ops: ops.clone(),
        audit: vec![audit::event(
            audit::LOCK_CREATED,
            serde_json::json!({"lock": lock_id, "target": lock.spec.target.to_string(),
                "message": message, "by": "sigil-auth", "token": token}),
        )],
    };
    match state.store.commit(txn).await {
        Ok(revs) => {
            state.cache.apply_committed(&ops, &revs);
            tracing::warn!(token, "bound_keypair join state mismatch: token locked");
        }
        Err(e) => tracing::error!(error = %e, "failed to store the bound_keypair lock"),
    }
    lock_id
}

/// Denials from helpers carry the join's audit fields unless they set their own.
fn with_fallback_audit(mut d: JoinDenied, audit: &serde_json::Value) -> JoinDenied {
    if d.audit.is_null() {
        d.audit = audit.clone();
    }
    d
}

fn onboarding_hash(spec: &BoundKeypairJoin) -> String {
    let bytes = serde_json::to_vec(&spec.onboarding).unwrap_or_default();
    sigil_pki::sha256_hex(&bytes)
}

/// Ask the agent to sign a fresh challenge (naming `key` if `name_key`);
/// returns the answer's new key (rotation) after checking the signature with
/// `key` (or the new key).
pub(super) async fn prove(
    conv: &mut dyn Conversation,
    token: &Token,
    cluster: &str,
    key: &BoundKey,
    rotate: bool,
    name_key: bool,
) -> Result<Option<BoundKey>, JoinDenied> {
    let named = name_key.then_some(key.line.as_str());
    let payload = challenge_payload(&token.metadata.name, cluster, rotate, named)?;
    let answer = conv.challenge(payload.clone()).await?;
    let (sig, new_key) = parse_answer(&answer, rotate).map_err(JoinDenied::new)?;
    let new_key = new_key
        .map(|k| BoundKey::parse(&k))
        .transpose()
        .map_err(|e| JoinDenied::new(format!("rotation: new public key: {e}")))?;
    new_key
        .as_ref()
        .unwrap_or(key)
        .verify(&payload, &sig)
        .map_err(|e| JoinDenied::new(if rotate { format!("rotation: {e}") } else { e }))?;
    Ok(new_key)
}

#[async_trait]
impl JoinMethod for BoundKeypairJoinMethod {
    fn name(&self) -> &'static str {
        "bound_keypair"
    }

    async fn verify(
        &self,
        state: &AuthState,
        init: &JoinInit,
        conv: &mut dyn Conversation,
    ) -> Result<Verified, JoinDenied> {
        let token = load_token(state, &init.token, JoinMethodKind::BoundKeypair).await?;
        let name = token.metadata.name.clone();
        let mut audit = serde_json::json!({ "token": name });
        let deny = |reason: String, audit: &serde_json::Value| {
            JoinDenied::new(reason).with_audit(audit.clone())
        };
        let spec = token
            .spec
            .bound_keypair
            .clone()
            .ok_or_else(|| deny("token has no bound_keypair section".into(), &audit))?;
        if init.evidence.len() > MAX_INPUT {
            return Err(deny("evidence is too long".into(), &audit));
        }
        let ev: Evidence = serde_json::from_slice(&init.evidence)
            .map_err(|e| deny(format!("undecodable evidence: {e}"), &audit))?;
        let presented = BoundKey::parse(&ev.public_key)
            .map_err(|e| deny(format!("presented key: {e}"), &audit))?;
        audit["bound_public_key_sha256"] = presented.sha256.clone().into();

        let key = keys::bound_keypair_state(&name);
        let item = state
            .store
            .get(&key)
            .await
            .map_err(|e| JoinDenied::unavailable(format!("bound_keypair state lookup: {e}")))?;
        let revision = item.as_ref().map(|i| i.revision);
        let onboarding = onboarding_hash(&spec);
        let mut rec = match &item {
            Some(i) => serde_json::from_slice::<KeyState>(&i.value)
                .map_err(|e| deny(format!("undecodable bound_keypair state: {e}"), &audit))?,
            None => KeyState::default(),
        };
        if rec.onboarding_sha256 != onboarding {
            rec = KeyState::default();
        }
        let tls_key = sigil_pki::sha256_hex(&init.public_key_spki);
        let shown_state = sigil_pki::sha256_hex(ev.join_state.as_bytes());
        if let Some(last) = exchange::repeated(&rec, &tls_key, &shown_state, &presented.line) {
            let last = last.clone();
            return exchange::verify_retry(state, conv, &token, &rec, last, &presented, audit)
                .await;
        }
        let presented_key = presented.line.clone();

        // Binding: the key on record, else the initial key, else registration.
        let now = OffsetDateTime::now_utc();
        let mut registered = false;
        let bound = match (&rec.bound_public_key, &spec.onboarding) {
            (Some(b), _) => {
                BoundKey::parse(b).map_err(|e| deny(format!("stored bound key: {e}"), &audit))?
            }
            (None, o) if o.initial_public_key.is_some() => {
                BoundKey::parse(o.initial_public_key.as_deref().unwrap_or_default())
                    .map_err(|e| deny(format!("initial_public_key: {e}"), &audit))?
            }
            (None, o) => {
                let (Some(want), Some(got)) = (&o.registration_secret, &ev.registration_secret)
                else {
                    return Err(deny(
                        "no key bound and no registration secret presented".into(),
                        &audit,
                    ));
                };
                if aws_lc_rs::constant_time::verify_slices_are_equal(
                    want.as_bytes(),
                    got.as_bytes(),
                )
                .is_err()
                {
                    return Err(deny("wrong registration secret".into(), &audit));
                }
                if o.must_register_before.is_some_and(|t| now >= t) {
                    return Err(deny(
                        "registration secret used after must_register_before".into(),
                        &audit,
                    ));
                }
                registered = true;
                presented.clone()
            }
        };
        if bound.line != presented.line {
            return Err(deny(
                format!(
                    "presented key {} is not the key bound to the token",
                    presented.sha256
                ),
                &audit,
            ));
        }

        prove(conv, &token, &state.cluster, &bound, false, false)
            .await
            .map_err(|d| with_fallback_audit(d, &audit))?;

        // Only a key holder gets this far, so only a key holder can lock.
        if rec.sequence > 0 {
            let stale = match rec.join_state_sha256.as_deref() {
                Some(want) => {
                    let got = sigil_pki::sha256_hex(ev.join_state.as_bytes());
                    aws_lc_rs::constant_time::verify_slices_are_equal(
                        want.as_bytes(),
                        got.as_bytes(),
                    )
                    .is_err()
                    .then(|| describe_stale(state, &name, &ev.join_state, rec.sequence))
                }
                // A record from before the hash was kept: the signature and sequence.
                None => match check_join_state(state, &name, &ev.join_state) {
                    Ok(s) if s == rec.sequence => None,
                    _ => Some(describe_stale(state, &name, &ev.join_state, rec.sequence)),
                },
            };
            if let Some(why) = stale {
                let lock = lock_token(state, &name, &why).await;
                audit["lock"] = lock.into();
                audit["sequence"] = rec.sequence.into();
                return Err(deny(format!("{why}; token locked"), &audit));
            }
        }
        if rec.recoveries >= spec.recovery.limit {
            return Err(deny(
                format!(
                    "recovery limit {} reached: raise spec.bound_keypair.recovery.limit or create a new token",
                    spec.recovery.limit
                ),
                &audit,
            ));
        }

        let mut rotated = false;
        let mut bound = bound;
        if let Some(after) = spec.rotate_after
            && now >= after
            && rec.last_rotated_at.is_none_or(|t| t < after)
        {
            let new_key = prove(conv, &token, &state.cluster, &bound, true, false)
                .await
                .map_err(|d| with_fallback_audit(d, &audit))?;
            let Some(new_key) = new_key else {
                return Err(deny("rotation answer without a new key".into(), &audit));
            };
            if new_key.line == bound.line {
                return Err(deny("rotation: the new key is the old key".into(), &audit));
            }
            bound = new_key;
            rec.last_rotated_at = Some(now);
            rotated = true;
        }

        rec.sequence += 1;
        rec.recoveries += 1;
        rec.bound_public_key = Some(bound.line.clone());
        rec.onboarding_sha256 = onboarding;
        let join_state = sign_join_state(state, &name, rec.sequence, &bound)?;
        rec.join_state_sha256 = Some(sigil_pki::sha256_hex(join_state.as_bytes()));
        audit["bound_public_key_sha256"] = bound.sha256.clone().into();
        audit["sequence"] = rec.sequence.into();
        audit["recoveries"] = rec.recoveries.into();
        audit["registered"] = registered.into();
        audit["rotated"] = rotated.into();
        let attributes: std::collections::BTreeMap<String, String> = [
            ("public_key_sha256".to_string(), bound.sha256.clone()),
            ("recoveries".to_string(), rec.recoveries.to_string()),
        ]
        .into_iter()
        .collect();
        // Written with the instance, in the same transaction (retry::record).
        let pending = PendingExchange {
            store_key: key,
            revision,
            last: LastExchange {
                presented_state_sha256: shown_state,
                presented_key,
                tls_key_sha256: tls_key,
                bot_name: String::new(),
                bot_uid: String::new(),
                instance_id: String::new(),
                join_state: join_state.clone(),
                attributes: attributes.clone(),
                at: now,
            },
            rec,
        };
        Ok(Verified {
            bot_name: token.spec.bot_name.clone(),
            bot_uid: token.spec.bot_uid.clone(),
            token_name: name,
            consume: vec![],
            attributes,
            renewable: true,
            audit,
            join_state,
            spend: super::retry::Spend::Exchange(Box::new(pending)),
        })
    }
}

#[cfg(test)]
#[path = "bound_keypair_tests.rs"]
mod tests;
