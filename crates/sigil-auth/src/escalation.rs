//! No privilege escalation through the admin API (the Kubernetes RBAC rule):
//! a caller may only grant what its *current* roles already allow. Each
//! change that can hand out permissions is checked here —
//! - creating or editing a role: the new allow side, and every deny it lifts;
//! - giving a bot roles (create, update): each added role, and the denies of
//!   each removed one;
//! - minting a join token for a bot: every role of that bot (whoever holds
//!   the token becomes the bot).
//!
//! A caller whose roles allow the `escalate` verb on the kind (admin-equivalent,
//! and part of `*`) may grant beyond what it holds; the local admin socket may
//! do anything. The pure comparison lives in `sigil_types::RoleSet::uncovered`.

use sigil_types::{Role, RoleConditions, RoleSet, RoleSpecRef, lifted_denies};
use tonic::Status;

use crate::authz::{self, Caller};
use crate::state::AuthState;

/// The verb that lifts the rule.
pub const ESCALATE: &str = "escalate";

/// What the caller may grant, or `None` when it may grant anything.
fn granter(state: &AuthState, caller: &Caller, kind: &str) -> Result<Option<RoleSet>, Status> {
    Ok(authz::current_roles(state, caller)?.filter(|set| !set.allows(kind, ESCALATE)))
}

fn refuse(caller: &Caller, what: &str, missing: Vec<String>) -> Result<(), Status> {
    if missing.is_empty() {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "{} may not {what}: it would grant what the caller does not hold ({}); \
         only a caller whose roles allow all of it, or the `escalate` verb, may",
        authz::actor(caller),
        missing.join("; ")
    )))
}

/// Creating (`old` = None) or replacing role `new`.
pub fn check_role(
    state: &AuthState,
    caller: &Caller,
    old: Option<&Role>,
    new: &Role,
) -> Result<(), Status> {
    let Some(set) = granter(state, caller, "role")? else {
        return Ok(());
    };
    let mut missing = set.uncovered(&RoleSpecRef::of(&new.spec));
    if let Some(old) = old {
        missing.extend(lifted(&set, &old.spec.deny, &new.spec.deny));
    }
    refuse(
        caller,
        &format!("write role {:?}", new.metadata.name),
        missing,
    )
}

/// Giving bot `bot` the roles `new` in place of `old` (empty for a new bot).
pub fn check_bot_roles(
    state: &AuthState,
    caller: &Caller,
    bot: &str,
    old: &[String],
    new: &[String],
) -> Result<(), Status> {
    let Some(set) = granter(state, caller, "bot")? else {
        return Ok(());
    };
    let mut missing = Vec::new();
    for name in new.iter().filter(|r| !old.contains(r)) {
        let role = existing_role(state, name)?;
        missing.extend(
            set.uncovered(&RoleSpecRef::of(&role.spec))
                .into_iter()
                .map(|m| format!("role {name}: {m}")),
        );
    }
    for name in old.iter().filter(|r| !new.contains(r)) {
        // A role that no longer exists binds nobody; nothing is lifted.
        if let Ok(role) = existing_role(state, name) {
            missing.extend(
                lifted(&set, &role.spec.deny, &RoleConditions::default())
                    .into_iter()
                    .map(|m| format!("removing role {name}: {m}")),
            );
        }
    }
    refuse(caller, &format!("give bot {bot:?} these roles"), missing)
}

/// Minting a join token for `bot`: the token's holder becomes the bot, so
/// the caller must hold all the bot's roles (or `escalate` on `token`).
pub fn check_token_for_bot(state: &AuthState, caller: &Caller, bot: &str) -> Result<(), Status> {
    let Some(set) = granter(state, caller, "token")? else {
        return Ok(());
    };
    let Some(b) = state.cache.bot(bot) else {
        // The reference check reports the missing bot.
        return Ok(());
    };
    let mut missing = Vec::new();
    for name in &b.spec.roles {
        let role = existing_role(state, name)?;
        missing.extend(
            set.uncovered(&RoleSpecRef::of(&role.spec))
                .into_iter()
                .map(|m| format!("role {name}: {m}")),
        );
    }
    refuse(
        caller,
        &format!("mint a join token for bot {bot:?}"),
        missing,
    )
}

/// Denies present in `old` and gone from `new`, as grants the caller must hold.
fn lifted(set: &RoleSet, old: &RoleConditions, new: &RoleConditions) -> Vec<String> {
    let lifted = lifted_denies(old, new);
    let empty = RoleConditions::default();
    set.uncovered(&RoleSpecRef {
        allow: &lifted,
        deny: &empty,
    })
    .into_iter()
    .map(|m| format!("lifting deny {m}"))
    .collect()
}

fn existing_role(state: &AuthState, name: &str) -> Result<Role, Status> {
    state
        .cache
        .roles(std::slice::from_ref(&name.to_string()))
        .ok()
        .and_then(|mut v| v.pop())
        .ok_or_else(|| {
            Status::failed_precondition(format!(
                "role {name:?} does not exist: create it first with `sigil create -f role.yaml`"
            ))
        })
}
