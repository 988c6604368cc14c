//! Renewal of a bot instance's own identity, with the generation counter.
//!
//! The server stores, per instance, the generation it last issued and the
//! fingerprint of the key it issued it to. A renewal presenting generation
//! `g` with next key `K`:
//! - `g == stored`: normal; issue `g + 1` to `K`.
//! - `g + 1 == stored` and `K` is the key `stored` was issued to: the agent
//!   crashed after we issued but before it saved the result, and retries
//!   with the key it persisted before asking. Reissue `stored` to `K`.
//! - anything else: someone renewed this identity from a copy. Refuse, lock
//!   this instance (only this one) and audit it.
//!
//! Crash safety, agent side (sigil-agent `storage.rs`, exercised at every step
//! by `tests/e2e_crash_safety.rs`): the next key is persisted before asking and
//! removed only after the new credential is saved. A crash in between leaves a
//! pending key equal to the current one; the agent replaces it rather than
//! renewing to the same key again. A copy of the storage taken mid-renewal
//! holds the same pending key, so both holders may get `stored` reissued to
//! it; their next renewals use fresh keys and diverge, and the second is the
//! mismatch above.

use sigil_pki::{CertInfo, ClientIdentity};
use sigil_proto::v1::{Credentials, RenewRequest};
use sigil_store::{Op, StoreError, Txn};
use sigil_types::{Authentication, BotInstance, Heartbeat, Lock, LockSpec, LockTarget, Metadata};
use time::OffsetDateTime;
use tonic::Status;

use crate::audit;
use crate::issuance::{self, effective_ttl, fresh_bot_authority};
use crate::keys;
use crate::state::AuthState;

/// How many times a renewal retries after losing a compare-and-swap race.
const CAS_RETRIES: usize = 3;

pub async fn renew(
    state: &AuthState,
    caller: &(ClientIdentity, CertInfo),
    req: &RenewRequest,
    remote: &str,
) -> Result<Credentials, Status> {
    let (id, _info) = caller;
    if id.delegated {
        return Err(Status::permission_denied(
            "this identity came from a delegated join method: renew by joining again with fresh evidence",
        ));
    }
    if !id.renewable {
        return Err(Status::permission_denied(
            "this identity is not renewable (output credentials cannot renew)",
        ));
    }
    let auth = match fresh_bot_authority(state, &id.bot, &id.bot_uid).await {
        Ok(a) => a,
        Err(reason) => {
            deny(state, id, remote, &reason).await;
            return Err(Status::permission_denied(format!(
                "renewal denied: {reason}"
            )));
        }
    };
    let key_fp = sigil_pki::sha256_hex(&req.public_key_spki);
    let ttl = effective_ttl(req.ttl_seconds, auth.max_ttl);
    let key = keys::bot_instance(&id.bot, &id.instance_id);

    for attempt in 0..CAS_RETRIES {
        // First try the cached copy; after a lost compare-and-swap, the store.
        let cached = if attempt == 0 {
            state.cache.instance_item(&key)
        } else {
            None
        };
        let from_cache = cached.is_some();
        let item = match cached {
            Some(i) => Some(i),
            None => state
                .store
                .get(&key)
                .await
                .map_err(|e| Status::unavailable(format!("storage: {e}")))?,
        };
        let Some(item) = item else {
            deny(state, id, remote, "bot instance no longer exists").await;
            return Err(Status::permission_denied(
                "renewal denied: this bot instance was removed; rejoin with a new token",
            ));
        };
        let mut inst: BotInstance = serde_json::from_slice(&item.value)
            .map_err(|e| Status::internal(format!("undecodable bot instance: {e}")))?;
        let stored = inst.spec.generation;
        let next = if id.generation == stored {
            stored + 1
        } else if id.generation + 1 == stored && inst.spec.current_key_sha256 == key_fp {
            stored
        } else if from_cache {
            // Never accuse on a possibly stale copy: confirm with the store.
            continue;
        } else {
            return Err(generation_mismatch(state, id, &inst, remote).await);
        };

        let mut new_id = ClientIdentity {
            generation: next,
            roles: auth.roles.clone(),
            ..id.clone()
        };
        new_id.logins = auth.logins_for(&new_id);
        issuance::check_locks(state, &new_id, &[])?;
        let cert = crate::telemetry::issue("x509", || {
            state
                .cas()
                .client
                .signer
                .issue_client(&req.public_key_spki, &new_id, ttl)
        })
        .map_err(issuance::pki_error)?;
        let now = OffsetDateTime::now_utc();
        inst.spec.generation = next;
        inst.spec.current_key_sha256 = key_fp.clone();
        inst.spec.push_authentication(
            Authentication {
                time: now,
                method: format!("{}+renewal", id.join_method),
                remote_addr: remote.to_string(),
                public_key_sha256: key_fp.clone(),
                generation: next,
                attributes: Default::default(),
            },
            sigil_types::HISTORY_CAP,
        );
        if let Some(hb) = &req.heartbeat {
            inst.spec
                .push_heartbeat(heartbeat(hb, now), sigil_types::HISTORY_CAP);
        }
        let value = serde_json::to_vec(&inst).map_err(|e| Status::internal(e.to_string()))?;
        let txn = Txn {
            ops: vec![Op::Update {
                key: key.clone(),
                value,
                expires: state.instance_expiry(cert.not_after),
                expected_revision: Some(item.revision),
            }],
            audit: vec![
                audit::event(
                    audit::RENEWAL,
                    serde_json::json!({
                        "bot": id.bot, "bot_instance": id.instance_id,
                        "generation": next, "retry": next == stored,
                        "remote_addr": remote, "public_key_sha256": key_fp,
                    }),
                ),
                issuance::x509_issued_event(&new_id, &cert, ttl, "client"),
            ],
        };
        let ops = txn.ops.clone();
        match state.store.commit(txn).await {
            Ok(revs) => {
                state.cache.apply_committed(&ops, &revs);
                metrics::counter!("sigil_renewals_total", "result" => "ok").increment(1);
                metrics::counter!("sigil_certs_issued_total", "kind" => "x509").increment(1);
                return Ok(Credentials {
                    tls_cert_pem: cert.pem,
                    ca_certs_pem: state.cas().agent_bundle_pem(),
                    bot_name: id.bot.clone(),
                    instance_id: id.instance_id.clone(),
                    generation: next,
                    expires_unix: cert.not_after.unix_timestamp(),
                    cluster_name: state.cluster.clone(),
                    roles: auth.roles.clone(),
                    renewable: true,
                    join_state: String::new(),
                    ..audit::witness_fields(state)
                });
            }
            Err(StoreError::Conflict(_)) => continue,
            Err(e) => return Err(Status::unavailable(format!("storage: {e}"))),
        }
    }
    Err(Status::aborted(
        "concurrent renewals of the same instance; retry",
    ))
}

/// Lock the instance and audit the copy; the error names the lock.
pub(crate) async fn generation_mismatch(
    state: &AuthState,
    id: &ClientIdentity,
    inst: &BotInstance,
    remote: &str,
) -> Status {
    metrics::counter!("sigil_renewals_total", "result" => "generation_mismatch").increment(1);
    let lock_id = uuid::Uuid::new_v4().to_string();
    let message = format!(
        "generation mismatch: presented {} but {} was issued; the credential was copied",
        id.generation, inst.spec.generation
    );
    let lock = Lock::new(
        Metadata {
            name: lock_id.clone(),
            ..Default::default()
        },
        LockSpec {
            target: LockTarget::BotInstance(id.instance_id.clone()),
            message: message.clone(),
            created_by: "sigil-auth".to_string(),
            created_at: Some(OffsetDateTime::now_utc()),
        },
    );
    let fields = serde_json::json!({
        "bot": id.bot, "bot_instance": id.instance_id,
        "presented_generation": id.generation, "stored_generation": inst.spec.generation,
        "remote_addr": remote, "lock": lock_id,
    });
    let denied =
        Status::permission_denied(format!("renewal denied: {message}; bot instance locked"));
    let value = match serde_json::to_vec(&lock) {
        Ok(v) => v,
        Err(e) => {
            // Still refused; only the lock could not be recorded.
            tracing::error!(error = %e, "encoding the generation-mismatch lock failed");
            return denied;
        }
    };
    let txn = Txn {
        ops: vec![Op::Create {
            key: keys::lock(&lock_id),
            value,
            expires: None,
        }],
        audit: vec![
            audit::event(audit::GENERATION_MISMATCH, fields.clone()),
            audit::event(
                audit::LOCK_CREATED,
                serde_json::json!({"lock": lock_id, "target": lock.spec.target.to_string(), "message": message, "by": "sigil-auth"}),
            ),
        ],
    };
    let ops = txn.ops.clone();
    match state.store.commit(txn).await {
        Ok(revs) => {
            // Enforce at once, before the watch event arrives.
            state.cache.apply_committed(&ops, &revs);
            tracing::warn!(bot = %id.bot, instance = %id.instance_id, "generation mismatch: instance locked");
        }
        Err(e) => tracing::error!(error = %e, "failed to store the generation-mismatch lock"),
    }
    denied
}

async fn deny(state: &AuthState, id: &ClientIdentity, remote: &str, reason: &str) {
    audit_denied(state, Some(id), remote, reason).await;
}

/// Count and audit a refused renewal (`id` is None when the caller had no
/// usable identity).
pub async fn audit_denied(
    state: &AuthState,
    id: Option<&ClientIdentity>,
    remote: &str,
    reason: &str,
) {
    metrics::counter!("sigil_renewals_total", "result" => "denied").increment(1);
    let ev = audit::event(
        audit::RENEWAL_DENIED,
        serde_json::json!({
            "bot": id.map(|i| &i.bot), "bot_instance": id.map(|i| &i.instance_id),
            "reason": reason, "remote_addr": remote,
        }),
    );
    // Identical denials in a flood are counted into one row (audit/aggregate.rs).
    state.denials.record(state.store.as_ref(), ev).await;
}

/// Convert a self-reported heartbeat.
pub fn heartbeat(hb: &sigil_proto::v1::Heartbeat, now: OffsetDateTime) -> Heartbeat {
    // Self-reported: clip lengths so an agent cannot bloat its record.
    let clip = |s: &str| s.chars().take(128).collect::<String>();
    Heartbeat {
        time: now,
        hostname: clip(&hb.hostname),
        version: clip(&hb.version),
        os: clip(&hb.os),
        uptime_seconds: hb.uptime_seconds,
        one_shot: hb.one_shot,
    }
}
