//! The join, shared by every method: prove (the method), authorize, then
//! either create a bot instance or — for a delegated method re-proving with
//! its current certificate — advance the existing one, issue and audit.

use sigil_pki::ClientIdentity;
use sigil_proto::v1::{Credentials, JoinInit};
use sigil_store::{Op, StoreError, Txn};
use sigil_types::{Authentication, BotInstance, BotInstanceSpec, LockTarget, Metadata};
use time::OffsetDateTime;
use tonic::Status;

use super::retry::{self, Spend};
use super::{Conversation, JoinDenied, Verified};
use crate::audit;
use crate::issuance::{self, BotAuthority, effective_ttl, fresh_bot_authority};
use crate::keys;
use crate::renewal;
use crate::state::AuthState;

/// The message every refused join gets, whatever the reason.
pub const JOIN_DENIED: &str = "join denied";

/// Audit and count a refused join; the caller hears only "join denied".
pub(super) async fn denied(
    state: &AuthState,
    init: &JoinInit,
    remote: &str,
    reason: String,
    extra: &serde_json::Value,
) -> Status {
    metrics::counter!("sigil_joins_total", "result" => "denied").increment(1);
    tracing::info!(method = %init.join_method, remote, "join denied");
    let mut fields = serde_json::json!({
        "method": init.join_method, "remote_addr": remote, "reason": reason,
    });
    if !init.instance_id.is_empty() {
        fields["bot_instance"] = serde_json::Value::String(init.instance_id.clone());
    }
    merge(&mut fields, extra);
    let ev = audit::event(audit::JOIN_DENIED, fields);
    // Identical denials in a flood are counted into one row (audit/aggregate.rs).
    state.denials.record(state.store.as_ref(), ev).await;
    Status::permission_denied(JOIN_DENIED)
}

/// Audit and count a join that could not be checked (the caller hears
/// `Unavailable` and may retry); a retrying agent's repeats are aggregated
/// like denials.
async fn unchecked(
    state: &AuthState,
    init: &JoinInit,
    remote: &str,
    reason: &str,
    extra: &serde_json::Value,
) {
    metrics::counter!("sigil_joins_total", "result" => "unavailable").increment(1);
    tracing::error!(method = %init.join_method, remote, reason = %reason, "join could not be checked");
    let mut fields = serde_json::json!({
        "method": init.join_method, "remote_addr": remote, "reason": reason,
    });
    if !init.instance_id.is_empty() {
        fields["bot_instance"] = serde_json::Value::String(init.instance_id.clone());
    }
    merge(&mut fields, extra);
    let ev = audit::event(audit::JOIN_UNCHECKED, fields);
    state.denials.record(state.store.as_ref(), ev).await;
}

pub(super) fn merge(fields: &mut serde_json::Value, extra: &serde_json::Value) {
    if let (Some(f), Some(extra)) = (fields.as_object_mut(), extra.as_object()) {
        f.extend(extra.clone());
    }
}

/// The whole join. `presented` is the client certificate on the call, if
/// any: a delegated method's re-proof must carry the instance's own.
pub async fn join(
    state: &AuthState,
    init: &JoinInit,
    conv: &mut dyn Conversation,
    remote: &str,
    presented: Option<&ClientIdentity>,
) -> Result<Credentials, Status> {
    let Some(method) = state.joins.get(&init.join_method) else {
        let reason = format!("unknown join method {:?}", init.join_method);
        return Err(denied(state, init, remote, reason, &serde_json::json!({})).await);
    };
    let verified = match method.verify(state, init, conv).await {
        Ok(v) => v,
        Err(d) if d.abandoned => {
            metrics::counter!("sigil_joins_total", "result" => "abandoned").increment(1);
            tracing::info!(method = %init.join_method, remote, "the agent went away mid-join");
            return Err(Status::cancelled("the join was abandoned"));
        }
        Err(d) if d.unavailable => {
            unchecked(state, init, remote, &d.reason, &d.audit).await;
            return Err(Status::unavailable(
                "the auth service cannot check joins right now; retry",
            ));
        }
        Err(JoinDenied { reason, audit, .. }) => {
            return Err(denied(state, init, remote, reason, &audit).await);
        }
    };
    let auth = match fresh_bot_authority(state, &verified.bot_name, &verified.bot_uid).await {
        Ok(a) => a,
        Err(reason) => return Err(denied(state, init, remote, reason, &verified.audit).await),
    };
    if let Spend::Retry(spent) = &verified.spend {
        let spent = spent.clone();
        retry::answer(state, init, remote, spent, verified, auth).await
    } else if init.instance_id.is_empty() {
        new_instance(state, init, remote, verified, auth).await
    } else {
        rejoin(state, init, remote, presented, verified, auth).await
    }
}

/// The token a join used, as the instance records it: the name of a
/// non-secret token, never a `token`-method secret.
fn recorded_token(init: &JoinInit, v: &Verified) -> Option<String> {
    (init.join_method != "token").then(|| v.token_name.clone())
}

pub(super) fn identity(
    state: &AuthState,
    v: &Verified,
    auth: &BotAuthority,
    init: &JoinInit,
    instance_id: &str,
    generation: u64,
) -> ClientIdentity {
    let mut id = ClientIdentity {
        cluster: state.cluster.clone(),
        bot: v.bot_name.clone(),
        bot_uid: auth.uid.clone(),
        instance_id: instance_id.to_string(),
        roles: auth.roles.clone(),
        generation,
        renewable: v.renewable,
        delegated: !v.renewable,
        join_method: init.join_method.clone(),
        logins: vec![],
        join_attributes: v.attributes.clone(),
    };
    id.logins = auth.logins_for(&id);
    id
}

/// The client certificate a join answers with, unless a lock applies (to the bot, its
/// instance or roles, or the token): `Ok(Err(reason))` is that refusal.
pub(super) fn certify(
    state: &AuthState,
    init: &JoinInit,
    verified: &Verified,
    auth: &BotAuthority,
    id: &ClientIdentity,
) -> Result<Result<(sigil_pki::IssuedCert, std::time::Duration), String>, Status> {
    let token_lock = LockTarget::Token(keys::token_ref(&verified.token_name));
    if let Err(e) = issuance::check_locks(state, id, &[token_lock]) {
        // Unavailable (a stale view of locks) is not a denial: the agent retries.
        if e.code() == tonic::Code::Unavailable {
            return Err(e);
        }
        return Ok(Err(e.message().to_string()));
    }
    let ttl = effective_ttl(init.ttl_seconds, auth.max_ttl);
    let cert = crate::telemetry::issue("x509", || {
        state
            .cas()
            .client
            .signer
            .issue_client(&init.public_key_spki, id, ttl)
    })
    .map_err(issuance::pki_error)?;
    Ok(Ok((cert, ttl)))
}

async fn new_instance(
    state: &AuthState,
    init: &JoinInit,
    remote: &str,
    verified: Verified,
    auth: BotAuthority,
) -> Result<Credentials, Status> {
    let instance_id = uuid::Uuid::new_v4().to_string();
    let id = identity(state, &verified, &auth, init, &instance_id, 1);
    let (cert, ttl) = match certify(state, init, &verified, &auth, &id)? {
        Ok(issued) => issued,
        Err(reason) => return Err(denied(state, init, remote, reason, &verified.audit).await),
    };
    let now = OffsetDateTime::now_utc();
    let key_fp = sigil_pki::sha256_hex(&init.public_key_spki);
    let authn = Authentication {
        time: now,
        method: init.join_method.clone(),
        remote_addr: remote.to_string(),
        public_key_sha256: key_fp.clone(),
        generation: 1,
        attributes: verified.attributes.clone(),
    };
    let mut spec = BotInstanceSpec {
        bot_name: id.bot.clone(),
        instance_id: instance_id.clone(),
        join_method: init.join_method.clone(),
        join_token: recorded_token(init, &verified),
        generation: 1,
        current_key_sha256: key_fp.clone(),
        ..Default::default()
    };
    spec.push_authentication(authn, sigil_types::HISTORY_CAP);
    if let Some(hb) = &init.heartbeat {
        spec.push_heartbeat(renewal::heartbeat(hb, now), sigil_types::HISTORY_CAP);
    }
    let inst = BotInstance::new(Metadata::named(instance_id.clone()), spec);
    let mut ops = verified.consume.clone();
    ops.extend(retry::record(&verified.spend, &id, &key_fp, now)?);
    ops.push(Op::Create {
        key: keys::bot_instance(&id.bot, &instance_id),
        value: serde_json::to_vec(&inst).map_err(|e| Status::internal(e.to_string()))?,
        expires: state.instance_expiry(cert.not_after),
    });
    let mut fields = serde_json::json!({
        "method": init.join_method, "bot": id.bot, "bot_instance": instance_id,
        "remote_addr": remote, "public_key_sha256": key_fp, "roles": auth.roles,
    });
    merge(&mut fields, &verified.audit);
    let txn = Txn {
        ops,
        audit: vec![
            audit::event(audit::JOIN_SUCCESS, fields),
            issuance::x509_issued_event(&id, &cert, ttl, "client"),
        ],
    };
    let ops = txn.ops.clone();
    match state.store.commit(txn).await {
        Ok(revs) => state.cache.apply_committed(&ops, &revs),
        // Storage trouble is not a denial: the agent should retry.
        Err(StoreError::Backend(e)) => {
            tracing::error!(error = %e, "storage failed during a join");
            return Err(Status::unavailable("storage unavailable; retry"));
        }
        // Lost the race for a single-use token (or a join state).
        Err(e) => {
            let reason = format!("could not consume the token: {e}");
            return Err(denied(state, init, remote, reason, &verified.audit).await);
        }
    }
    metrics::counter!("sigil_joins_total", "result" => "ok").increment(1);
    metrics::counter!("sigil_certs_issued_total", "kind" => "x509").increment(1);
    tracing::info!(bot = %id.bot, instance = %instance_id, method = %init.join_method, "bot joined");
    Ok(credentials(state, &id, cert, &auth, &verified))
}

pub(super) fn credentials(
    state: &AuthState,
    id: &ClientIdentity,
    cert: sigil_pki::IssuedCert,
    auth: &BotAuthority,
    v: &Verified,
) -> Credentials {
    Credentials {
        tls_cert_pem: cert.pem,
        ca_certs_pem: state.cas().agent_bundle_pem(),
        bot_name: id.bot.clone(),
        instance_id: id.instance_id.clone(),
        generation: id.generation,
        expires_unix: cert.not_after.unix_timestamp(),
        cluster_name: state.cluster.clone(),
        roles: auth.roles.clone(),
        renewable: v.renewable,
        join_state: v.join_state.clone(),
        ..audit::witness_fields(state)
    }
}

/// A delegated method re-proving an instance it already holds: the call
/// carries that instance's certificate, the token is the one it joined
/// with, and the generation follows on (a stale one means a copy: lock).
async fn rejoin(
    state: &AuthState,
    init: &JoinInit,
    remote: &str,
    presented: Option<&ClientIdentity>,
    verified: Verified,
    auth: BotAuthority,
) -> Result<Credentials, Status> {
    let deny = |reason: &str| denied(state, init, remote, reason.to_string(), &verified.audit);
    let Some(cur) = presented else {
        return Err(deny("re-proof without the instance's client certificate").await);
    };
    if cur.instance_id != init.instance_id
        || cur.bot != verified.bot_name
        || cur.bot_uid != verified.bot_uid
    {
        return Err(deny("the client certificate is for another bot instance").await);
    }
    if !cur.delegated || cur.join_method != init.join_method || verified.renewable {
        return Err(deny("only a delegated join method re-proves an instance").await);
    }
    let key = keys::bot_instance(&cur.bot, &cur.instance_id);
    let item = state
        .store
        .get(&key)
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    let Some(item) = item else {
        return Err(deny("bot instance no longer exists").await);
    };
    let mut inst: BotInstance = serde_json::from_slice(&item.value)
        .map_err(|e| Status::internal(format!("undecodable bot instance: {e}")))?;
    if inst.spec.join_token.as_deref() != Some(verified.token_name.as_str()) {
        return Err(deny("the instance joined through another token").await);
    }
    let key_fp = sigil_pki::sha256_hex(&init.public_key_spki);
    let stored = inst.spec.generation;
    let next = if cur.generation == stored {
        stored + 1
    } else if cur.generation + 1 == stored && inst.spec.current_key_sha256 == key_fp {
        stored
    } else {
        return Err(renewal::generation_mismatch(state, cur, &inst, remote).await);
    };
    let id = identity(state, &verified, &auth, init, &cur.instance_id, next);
    let token_lock = LockTarget::Token(keys::token_ref(&verified.token_name));
    if let Err(e) = issuance::check_locks(state, &id, &[token_lock]) {
        return Err(deny(e.message()).await);
    }
    let ttl = effective_ttl(init.ttl_seconds, auth.max_ttl);
    let cert = crate::telemetry::issue("x509", || {
        state
            .cas()
            .client
            .signer
            .issue_client(&init.public_key_spki, &id, ttl)
    })
    .map_err(issuance::pki_error)?;
    let now = OffsetDateTime::now_utc();
    inst.spec.generation = next;
    inst.spec.current_key_sha256 = key_fp.clone();
    inst.spec.push_authentication(
        Authentication {
            time: now,
            method: init.join_method.clone(),
            remote_addr: remote.to_string(),
            public_key_sha256: key_fp.clone(),
            generation: next,
            attributes: verified.attributes.clone(),
        },
        sigil_types::HISTORY_CAP,
    );
    if let Some(hb) = &init.heartbeat {
        inst.spec
            .push_heartbeat(renewal::heartbeat(hb, now), sigil_types::HISTORY_CAP);
    }
    let mut ops = verified.consume.clone();
    ops.push(Op::Update {
        key,
        value: serde_json::to_vec(&inst).map_err(|e| Status::internal(e.to_string()))?,
        expires: state.instance_expiry(cert.not_after),
        expected_revision: Some(item.revision),
    });
    let mut fields = serde_json::json!({
        "method": init.join_method, "bot": id.bot, "bot_instance": id.instance_id,
        "rejoin": true, "generation": next, "remote_addr": remote,
        "public_key_sha256": key_fp, "roles": auth.roles,
    });
    merge(&mut fields, &verified.audit);
    let txn = Txn {
        ops,
        audit: vec![
            audit::event(audit::JOIN_SUCCESS, fields),
            issuance::x509_issued_event(&id, &cert, ttl, "client"),
        ],
    };
    let ops = txn.ops.clone();
    match state.store.commit(txn).await {
        Ok(revs) => state.cache.apply_committed(&ops, &revs),
        Err(StoreError::Conflict(_)) => {
            return Err(Status::aborted(
                "concurrent re-proofs of the same instance; retry",
            ));
        }
        Err(e) => return Err(Status::unavailable(format!("storage: {e}"))),
    }
    metrics::counter!("sigil_joins_total", "result" => "ok").increment(1);
    metrics::counter!("sigil_certs_issued_total", "kind" => "x509").increment(1);
    tracing::info!(bot = %id.bot, instance = %id.instance_id, method = %init.join_method, generation = next, "bot re-proved");
    Ok(credentials(state, &id, cert, &auth, &verified))
}
