//! Shared issuance rules: who a bot is right now (its roles, logins, TTL cap)
//! and the audit record of every certificate.

use std::time::Duration;

use sigil_pki::{ClientIdentity, IssuedCert, SshUserPermissions};
use sigil_types::{LockTarget, RoleSet};
use tonic::Status;

use crate::audit;
use crate::authz;
use crate::state::AuthState;

/// A bot's effective authority, from its current roles.
pub struct BotAuthority {
    /// The bot's unique id (empty for bots older than ids).
    pub uid: String,
    pub roles: Vec<String>,
    pub role_set: RoleSet,
    pub max_ttl: Duration,
}

impl BotAuthority {
    /// The SSH logins of one identity: role login templates
    /// (`{{ join.github.actor }}`, `{{ bot.name }}`) rendered from its
    /// verified join attributes.
    pub fn logins_for(&self, id: &ClientIdentity) -> Vec<String> {
        self.role_set
            .logins_with(&crate::workload::bot_attributes(id))
    }

    /// What this bot's SSH user certificates permit (most-restrictive
    /// across its roles); `None` when its roles' `ssh_source_address`
    /// lists have no address in common, so no SSH certificate may be issued.
    pub fn ssh_user_permissions(&self) -> Option<SshUserPermissions> {
        let p = self.role_set.ssh_permissions();
        if p.source_address.as_ref().is_some_and(Vec::is_empty) {
            return None;
        }
        Some(SshUserPermissions {
            port_forwarding: p.port_forwarding,
            agent_forwarding: p.agent_forwarding,
            x11_forwarding: p.x11_forwarding,
            pty: p.pty,
            user_rc: p.user_rc,
            source_address: p.source_address,
        })
    }
}

/// [`bot_authority`], but a bot or role this server has not seen yet is read from
/// the store first: with several servers on one store, a bot created through
/// another server a moment ago may not have reached this one's cache. Only what
/// exists is read through (never an absence), so a stale cache cannot admit more.
pub async fn fresh_bot_authority(
    state: &AuthState,
    bot_name: &str,
    bot_uid: &str,
) -> Result<BotAuthority, String> {
    match bot_authority(state, bot_name, bot_uid) {
        Ok(a) => Ok(a),
        Err(first) => {
            if let Err(e) = state
                .cache
                .read_through_bot(state.store.as_ref(), bot_name)
                .await
            {
                tracing::warn!(error = %e, bot = %bot_name, "reading a bot through to the store failed");
                return Err(first);
            }
            bot_authority(state, bot_name, bot_uid)
        }
    }
}

/// Resolve a bot's current roles and TTL cap, refusing a missing bot, a bot
/// that is not the one `bot_uid` names (removed and re-created under the same
/// name since the credential or token was issued), or a missing role.
pub fn bot_authority(
    state: &AuthState,
    bot_name: &str,
    bot_uid: &str,
) -> Result<BotAuthority, String> {
    let bot = state
        .cache
        .bot(bot_name)
        .ok_or_else(|| format!("bot {bot_name:?} does not exist"))?;
    if bot.spec.uid != bot_uid {
        return Err(format!(
            "bot {bot_name:?} was removed and created again since this was issued"
        ));
    }
    let roles = state
        .cache
        .roles(&bot.spec.roles)
        .map_err(|r| format!("role {r:?} of bot {bot_name:?} does not exist"))?;
    let set = RoleSet::new(roles);
    let mut max_ttl = set.max_ttl(sigil_types::DEFAULT_MAX_TTL);
    if let Some(b) = bot.spec.max_ttl {
        max_ttl = max_ttl.min(b.0);
    }
    Ok(BotAuthority {
        uid: bot.spec.uid.clone(),
        roles: bot.spec.roles.clone(),
        role_set: set,
        max_ttl,
    })
}

/// The TTL to issue: the request (or the default) capped by the bot's roles.
pub fn effective_ttl(requested_secs: u64, cap: Duration) -> Duration {
    let req = if requested_secs == 0 {
        sigil_types::DEFAULT_CREDENTIAL_TTL
    } else {
        Duration::from_secs(requested_secs)
    };
    req.min(cap).max(Duration::from_secs(60).min(cap))
}

/// Check the locks for a new identity before issuing it.
pub fn check_locks(
    state: &AuthState,
    id: &ClientIdentity,
    extra: &[LockTarget],
) -> Result<(), Status> {
    state.view_current()?;
    let mut targets = authz::lock_targets(id);
    targets.extend_from_slice(extra);
    match state.cache.lock_for(&targets) {
        Some(l) => Err(authz::locked(&l)),
        None => Ok(()),
    }
}

/// The audit event for an issued X.509 certificate.
pub fn x509_issued_event(
    id: &ClientIdentity,
    cert: &IssuedCert,
    ttl: Duration,
    purpose: &str,
) -> sigil_store::NewAuditEvent {
    audit::event(
        audit::CERT_ISSUED,
        serde_json::json!({
            "kind": "x509",
            "ca": purpose,
            "serial": cert.serial_hex,
            "ttl_seconds": ttl.as_secs(),
            "bot": id.bot,
            "bot_instance": id.instance_id,
            "generation": id.generation,
            "renewable": id.renewable,
            "principals": id.roles,
        }),
    )
}

/// Map a PKI failure (usually a malformed public key from the client).
pub fn pki_error(e: sigil_pki::PkiError) -> Status {
    Status::invalid_argument(format!("cannot issue for the presented public key: {e}"))
}
