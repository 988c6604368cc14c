//! Who is calling, and may they? Every mTLS call resolves the caller's
//! identity from its connection, refuses expired certificates, and checks the
//! locks in force against the bot, instance, roles and logins it carries.

use sigil_pki::{CertInfo, ClientIdentity};
use sigil_store::Txn;
use sigil_types::{BotInstance, Lock, LockTarget, RoleSet};
use time::OffsetDateTime;
use tonic::{Request, Status};

use crate::state::AuthState;
use crate::tls::PeerInfo;

/// The authenticated caller of an API.
pub enum Caller {
    /// The data dir's owner over the admin Unix socket: full access.
    LocalAdmin,
    /// A bot identity presented as a client certificate.
    Bot(Box<(ClientIdentity, CertInfo)>),
}

pub fn peer<T>(req: &Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

/// The remote address for audit, or "local".
pub fn remote_addr<T>(req: &Request<T>) -> String {
    match peer(req).and_then(|p| p.remote_addr) {
        Some(a) => a.to_string(),
        None => "local".to_string(),
    }
}

/// Resolve the caller, refusing anonymous, expired or locked identities.
pub fn caller<T>(state: &AuthState, req: &Request<T>) -> Result<Caller, Status> {
    let p = peer(req).ok_or_else(|| Status::unauthenticated("no connection information"))?;
    if let Some(why) = &p.refused {
        return Err(Status::permission_denied(why.clone()));
    }
    if p.local_admin {
        return Ok(Caller::LocalAdmin);
    }
    let Some(id) = &p.identity else {
        return Err(match &p.identity_error {
            Some(_) => Status::unauthenticated("the client certificate is not a Sigil identity"),
            None => Status::unauthenticated(
                "this call needs a client certificate: join first, then use the agent's identity",
            ),
        });
    };
    let (ident, info) = id.as_ref();
    if ident.cluster != state.cluster {
        return Err(Status::unauthenticated(
            "the identity belongs to another cluster",
        ));
    }
    if info.not_after <= OffsetDateTime::now_utc() {
        return Err(Status::unauthenticated(
            "the client certificate has expired: rejoin with a new token",
        ));
    }
    if !issuer_trusted(state, p) {
        return Err(Status::unauthenticated(
            "the client certificate was not signed by a client CA this cluster trusts now (it was rotated out, or the certificate is not a Sigil identity): rejoin with a new token",
        ));
    }
    state.view_current()?;
    if let Some(lock) = state.cache.lock_for(&lock_targets(ident)) {
        return Err(locked(&lock));
    }
    Ok(Caller::Bot(Box::new((ident.clone(), info.clone()))))
}

/// Whether the CA that signed the connection's client certificate (found by its
/// signature at the handshake, never by fields the certificate states) is still one
/// the cluster trusts: a connection can outlive a rotation that drops that CA.
pub fn issuer_trusted(state: &AuthState, peer: &PeerInfo) -> bool {
    let Some(pin) = &peer.client_ca_pin else {
        return false;
    };
    client_ca_trusted(state, pin)
}

/// Whether `pin` (a client CA's SPKI pin) is one the cluster trusts now.
pub fn client_ca_trusted(state: &AuthState, pin: &str) -> bool {
    state
        .cas()
        .client
        .trusted
        .iter()
        .any(|ca| ca.spki_pin() == pin)
}

/// Every lock target an identity falls under.
pub fn lock_targets(id: &ClientIdentity) -> Vec<LockTarget> {
    let mut t = vec![
        LockTarget::Bot(id.bot.clone()),
        LockTarget::BotInstance(id.instance_id.clone()),
    ];
    t.extend(id.roles.iter().cloned().map(LockTarget::Role));
    t.extend(id.logins.iter().cloned().map(LockTarget::Login));
    t
}

/// The error for a request refused by a lock; names the lock's message.
pub fn locked(lock: &Lock) -> Status {
    let msg = if lock.spec.message.is_empty() {
        "no message".to_string()
    } else {
        lock.spec.message.clone()
    };
    Status::permission_denied(format!(
        "locked: {} (lock {}): {msg}",
        lock.spec.target, lock.metadata.name
    ))
}

/// [`caller`], then proof that the credential is still the bot's own: the
/// bot (by uid, not name) and the instance still exist, and an agent's own
/// identity is the newest generation issued. Every call but `Renew` (which
/// runs the generation protocol itself) goes through this.
pub async fn current_caller<T>(state: &AuthState, req: &Request<T>) -> Result<Caller, Status> {
    let caller = caller(state, req)?;
    if let Caller::Bot(b) = &caller {
        check_current(state, &b.0, &remote_addr(req)).await?;
    }
    Ok(caller)
}

/// Refuse a credential of a removed or re-created bot, of a removed
/// instance, or (for an agent's own identity) one a renewal superseded.
pub async fn check_current(
    state: &AuthState,
    id: &ClientIdentity,
    remote: &str,
) -> Result<(), Status> {
    let revoked = |why: &str| Status::permission_denied(format!("{why}: access revoked"));
    match state.cache.bot(&id.bot) {
        Some(bot) if bot.spec.uid == id.bot_uid => {}
        Some(_) => {
            return Err(revoked(
                "this credential belongs to a removed bot of the same name",
            ));
        }
        None => return Err(revoked("this credential's bot was removed")),
    }
    let Some(item) = instance_item(state, id).await? else {
        return Err(revoked(
            "this bot instance was removed; rejoin with a new token",
        ));
    };
    if !id.is_agent_identity() {
        // Output credentials outlive renewals of the agent that minted them.
        return Ok(());
    }
    let inst: BotInstance = serde_json::from_slice(&item.value)
        .map_err(|e| Status::internal(format!("undecodable bot instance: {e}")))?;
    let stored = inst.spec.generation;
    if id.generation == stored {
        return Ok(());
    }
    if id.generation + 1 == stored {
        // The holder may be the agent itself in the moment between its
        // renewal and switching connections (or after a crash before it saved
        // the renewal): refuse and record, but lock only if it then tries to
        // renew with another key, which the renewal protocol catches.
        superseded(state, id, stored, remote).await;
        return Err(Status::permission_denied(
            "this credential was superseded by a renewal: use the newest one (the agent renews and retries)",
        ));
    }
    Err(crate::renewal::generation_mismatch(state, id, &inst, remote).await)
}

/// The stored record of `id`'s bot instance (the cache first, then the store).
pub async fn instance_item(
    state: &AuthState,
    id: &ClientIdentity,
) -> Result<Option<sigil_store::Item>, Status> {
    let key = crate::keys::bot_instance(&id.bot, &id.instance_id);
    match state.cache.instance_item(&key) {
        Some(i) => Ok(Some(i)),
        None => state
            .store
            .get(&key)
            .await
            .map_err(|e| Status::unavailable(format!("storage: {e}"))),
    }
}

async fn superseded(state: &AuthState, id: &ClientIdentity, stored: u64, remote: &str) {
    metrics::counter!("sigil_superseded_credentials_total").increment(1);
    let ev = crate::audit::event(
        crate::audit::CREDENTIAL_SUPERSEDED,
        serde_json::json!({
            "bot": id.bot, "bot_instance": id.instance_id,
            "presented_generation": id.generation, "stored_generation": stored,
            "remote_addr": remote,
        }),
    );
    let txn = Txn {
        ops: vec![],
        audit: vec![ev],
    };
    if let Err(e) = state.store.commit(txn).await {
        tracing::error!(error = %e, "failed to audit a superseded credential");
    }
}

/// The caller's current roles, evaluated together: the bot's roles now, not
/// those baked into its certificate, so a removed bot or a revoked role takes
/// effect at once. `None` for the local admin (who holds everything).
pub fn current_roles(state: &AuthState, caller: &Caller) -> Result<Option<RoleSet>, Status> {
    match caller {
        Caller::LocalAdmin => Ok(None),
        Caller::Bot(b) => {
            let current = crate::issuance::bot_authority(state, &b.0.bot, &b.0.bot_uid)
                .map_err(|e| Status::permission_denied(format!("{e}: access revoked")))?;
            // The caller was checked against the locks on the roles its
            // certificate names; a role given since acts too, so a lock on
            // it must stop the caller as well.
            let granted: Vec<LockTarget> = current
                .roles
                .iter()
                .cloned()
                .map(LockTarget::Role)
                .collect();
            if let Some(lock) = state.cache.lock_for(&granted) {
                return Err(locked(&lock));
            }
            let roles = state.cache.roles(&current.roles).map_err(|missing| {
                Status::permission_denied(format!("role {missing:?} no longer exists"))
            })?;
            Ok(Some(RoleSet::new(roles)))
        }
    }
}

/// Admin authorization: the local socket may do anything; a bot needs a role
/// rule allowing `verb` on `kind` (a name of [`sigil_types::RULE_RESOURCES`]).
pub fn authorize_admin(
    state: &AuthState,
    caller: &Caller,
    kind: &str,
    verb: &str,
) -> Result<(), Status> {
    debug_assert!(sigil_types::RULE_RESOURCES.contains(&kind), "{kind}");
    match current_roles(state, caller)? {
        None => Ok(()),
        Some(set) if set.allows(kind, verb) => Ok(()),
        Some(_) => Err(Status::permission_denied(format!(
            "{} may not {verb} {kind}: no role rule allows it",
            actor(caller)
        ))),
    }
}

/// Before any document is parsed: may the caller `verb` anything at all?
/// Keeps callers with no such right away from the parser.
pub fn authorize_any(state: &AuthState, caller: &Caller, verb: &str) -> Result<(), Status> {
    match current_roles(state, caller)? {
        None => Ok(()),
        Some(set)
            if sigil_types::RULE_RESOURCES
                .iter()
                .any(|kind| set.allows(kind, verb)) =>
        {
            Ok(())
        }
        Some(_) => Err(Status::permission_denied(format!(
            "{} may not {verb} any resource: no role rule allows it",
            actor(caller)
        ))),
    }
}

/// A name for the caller in audit events.
pub fn actor(caller: &Caller) -> String {
    match caller {
        Caller::LocalAdmin => "local-admin".to_string(),
        Caller::Bot(b) => format!("bot:{}", b.0.bot),
    }
}
