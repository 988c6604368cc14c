//! No privilege escalation through the admin API (the Kubernetes RBAC rule):
//! a caller may only grant what its *current* roles already allow. Each
//! change that can hand out permissions is checked here —
//! - creating or editing a role: the new allow side (database grants too:
//!   `db_labels`, `db_server_labels`, `db_users`, `db_names`; app grants:
//!   `app_labels`, and `app_server_labels`, which makes a bot a `sigil proxy`
//!   that sees callers and signs their JWTs) and
//!   `ssh_*: true` options, and every deny (or `ssh_*: false`) it lifts;
//! - giving a bot roles (create, update): each added role, and the denies of
//!   each removed one (and its `ssh_*: false` options);
//! - raising a credential lifetime cap (a role's or a bot's `max_ttl`) past
//!   the caller's own;
//! - minting a join token for a bot: every role of that bot (whoever holds
//!   the token becomes the bot);
//! - naming a database's address (`database` resource): a database server is
//!   certified by the host CA for that address, as the auth service itself is,
//!   so the caller must hold it in `ssh_host_principals`.
//!
//! A `spiffe_federation` makes every workload of the cluster trust a foreign CA;
//! it grants no role permission, so it needs no check here beyond the admin
//! verb itself (`create`/`update` on `spiffe_federation`, which only roles that
//! name the kind, or `*`, hold).
//!
//! A caller whose roles allow the `escalate` verb on the kind (admin-equivalent,
//! and part of `*`) may grant beyond what it holds; the local admin socket may
//! do anything. The pure comparison lives in `sigil_types::RoleSet::uncovered`.

use std::time::Duration;

use sigil_types::{
    DEFAULT_MAX_TTL, Role, RoleConditions, RoleOptions, RoleSet, RoleSpecRef, format_duration,
    lifted_denies,
};
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

/// The escalation check a resource created or replaced through
/// `create -f` needs: a role, a bot (its roles and TTL cap) or a token.
pub fn check_resource(
    state: &AuthState,
    caller: &Caller,
    res: &sigil_types::AnyResource,
) -> Result<(), Status> {
    use sigil_types::AnyResource;
    let s = state;
    match res {
        AnyResource::Role(r) => {
            let old = s.cache.roles(std::slice::from_ref(&r.metadata.name)).ok();
            check_role(s, caller, old.as_ref().and_then(|v| v.first()), r)
        }
        AnyResource::Bot(b) => {
            let old = s.cache.bot(&b.metadata.name);
            let old_roles = old.as_ref().map(|o| o.spec.roles.as_slice());
            check_bot_roles(
                s,
                caller,
                &b.metadata.name,
                old_roles.unwrap_or_default(),
                &b.spec.roles,
            )?;
            let old_ttl = old.and_then(|o| o.spec.max_ttl).map(|t| t.0);
            let new_ttl = b.spec.max_ttl.map(|t| t.0);
            check_bot_ttl(s, caller, &b.metadata.name, old_ttl, new_ttl)
        }
        AnyResource::Token(t) => check_token_for_bot(s, caller, &t.spec.bot_name),
        AnyResource::Database(d) => check_database_address(s, caller, d),
        _ => Ok(()),
    }
}

/// A database's address becomes a name its server's host-CA certificate carries
/// (db_access): only a caller that may have hosts certified for it may set it,
/// or any `database` writer could get a certificate for the auth service's name.
pub fn check_database_address(
    state: &AuthState,
    caller: &Caller,
    db: &sigil_types::Database,
) -> Result<(), Status> {
    let Some(set) = granter(state, caller, "database")? else {
        return Ok(());
    };
    // An unparsable address is reported by validation.
    let Ok((host, _)) = db.spec.host_port() else {
        return Ok(());
    };
    let missing = if set.allows_ssh_host_principal(&host) {
        Vec::new()
    } else {
        vec![format!(
            "ssh_host_principals {host:?} (the address of database {:?})",
            db.metadata.name
        )]
    };
    refuse(
        caller,
        &format!("set database {:?}'s address", db.metadata.name),
        missing,
    )
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
        missing.extend(lifted_ssh_options(
            &set,
            &old.spec.options,
            &new.spec.options,
        ));
    }
    // A role's max_ttl caps its holders: raising it past the caller's own cap
    // hands out longer-lived credentials than the caller may have.
    let cap_of = |r: &Role| r.spec.options.max_ttl.map_or(DEFAULT_MAX_TTL, |t| t.0);
    missing.extend(raised_cap(
        &set,
        old.map_or(DEFAULT_MAX_TTL, cap_of),
        cap_of(new),
    ));
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
                    .chain(lifted_ssh_options(
                        &set,
                        &role.spec.options,
                        &RoleOptions::default(),
                    ))
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

/// A credential lifetime cap raised from `old` to `new` past the caller's own.
fn raised_cap(set: &RoleSet, old: Duration, new: Duration) -> Option<String> {
    let own = set.max_ttl(DEFAULT_MAX_TTL);
    (new > old && new > own).then(|| {
        format!(
            "max_ttl {} above the caller's own {}",
            format_duration(new),
            format_duration(own)
        )
    })
}

/// Raising (or removing) a bot's own `max_ttl` lifts a cap like a lifted deny.
pub fn check_bot_ttl(
    state: &AuthState,
    caller: &Caller,
    bot: &str,
    old: Option<Duration>,
    new: Option<Duration>,
) -> Result<(), Status> {
    let Some(set) = granter(state, caller, "bot")? else {
        return Ok(());
    };
    let Some(old) = old else {
        return Ok(());
    };
    // Without its own cap the bot is capped by its roles (the default at most).
    let new = new.unwrap_or(DEFAULT_MAX_TTL.max(old));
    refuse(
        caller,
        &format!("raise bot {bot:?}'s max_ttl"),
        raised_cap(&set, old, new).into_iter().collect(),
    )
}

/// Denies present in `old` and gone from `new`, as grants the caller must hold.
fn lifted(set: &RoleSet, old: &RoleConditions, new: &RoleConditions) -> Vec<String> {
    let lifted = lifted_denies(old, new);
    let empty = RoleConditions::default();
    set.uncovered(&RoleSpecRef {
        allow: &lifted,
        deny: &empty,
        options: None,
    })
    .into_iter()
    .map(|m| format!("lifting deny {m}"))
    .collect()
}

/// SSH restrictions `old` had and `new` drops or widens, as grants the caller must hold.
fn lifted_ssh_options(set: &RoleSet, old: &RoleOptions, new: &RoleOptions) -> Vec<String> {
    set.uncovered_lift(old, new)
        .into_iter()
        .map(|m| format!("lifting restriction {m}"))
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
