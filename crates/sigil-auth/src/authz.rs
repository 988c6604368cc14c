//! Who is calling, and may they? Every mTLS call resolves the caller's
//! identity from its connection, refuses expired certificates, and checks the
//! locks in force against the bot, instance, roles and logins it carries.

use sigil_pki::{CertInfo, ClientIdentity};
use sigil_types::{Lock, LockTarget, RoleSet};
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
    if let Some(lock) = state.cache.lock_for(&lock_targets(ident)) {
        return Err(locked(&lock));
    }
    Ok(Caller::Bot(Box::new((ident.clone(), info.clone()))))
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

/// Admin authorization: the local socket may do anything; a bot needs a role
/// rule allowing `verb` on `kind`.
pub fn authorize_admin(
    state: &AuthState,
    caller: &Caller,
    kind: &str,
    verb: &str,
) -> Result<(), Status> {
    match caller {
        Caller::LocalAdmin => Ok(()),
        Caller::Bot(b) => {
            // The bot's roles now, not those baked into its certificate: a
            // removed bot or a revoked role takes effect at once.
            let current = crate::issuance::bot_authority(state, &b.0.bot)
                .map_err(|e| Status::permission_denied(format!("{e}: access revoked")))?;
            let roles = state.cache.roles(&current.roles).map_err(|missing| {
                Status::permission_denied(format!("role {missing:?} no longer exists"))
            })?;
            if RoleSet::new(roles).allows(kind, verb) {
                Ok(())
            } else {
                Err(Status::permission_denied(format!(
                    "bot {:?} may not {verb} {kind}: no role rule allows it",
                    b.0.bot
                )))
            }
        }
    }
}

/// A name for the caller in audit events.
pub fn actor(caller: &Caller) -> String {
    match caller {
        Caller::LocalAdmin => "local-admin".to_string(),
        Caller::Bot(b) => format!("bot:{}", b.0.bot),
    }
}
