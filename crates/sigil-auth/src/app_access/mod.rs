//! Application access through `sigil proxy`: the auth service's side.
//!
//! The proxy is a bot whose roles' `app_server_labels` match the apps it
//! serves. It decides per request, but never from its own copy of policy:
//! - [`watch`] (`WatchAppAccess`) streams the apps it may serve and the client
//!   CAs, and a `generation` that moves on *every* cache change (roles, bots,
//!   locks, apps, CAs). The proxy keys its cached decisions by generation, so
//!   a removed role or a lock invalidates them as soon as the push arrives
//!   (milliseconds), and it re-checks open connections then (lock cut-off).
//! - [`authorize`] (`AuthorizeApp`) evaluates one caller against one app with
//!   the same code issuance uses (`bot_authority`, `check_locks`), so lock and
//!   role semantics cannot drift between a second evaluator and this one.
//!   Chosen over streaming every bot's roles and every lock to the proxy: the
//!   proxy learns nothing about callers that never call it, and there is one
//!   lock matcher.
//! - [`sign_jwt`] (`SignAppJwt`): the `Sigil-Jwt-Assertion` token, ES256 from
//!   the `jwt` CA (verifiable at `/jwks.json`), after the same check.
//! - [`report`] (`ReportAppRequests`): the proxy's `app.request` audit.

mod caller;
mod report;
mod svid;
mod watch;

pub use report::report;
pub use watch::watch;

use std::time::Duration;

use serde_json::{Map, Value};
use sigil_pki::{ClientIdentity, JwtSvidClaims};
use sigil_proto::v1::{AppJwt, AuthorizeAppRequest, AuthorizeAppResponse};
use sigil_types::App;
use time::OffsetDateTime;
use tonic::Status;

use crate::authz;
use crate::issuance::bot_authority;
use crate::state::AuthState;

/// The audit event of a proxied request (and of a refused one).
pub const APP_REQUEST: &str = "app.request";
/// An app JWT signed at a proxy's request.
pub const APP_JWT_SIGNED: &str = "app.jwt_signed";
/// Records a proxy reported about apps it does not serve, skipped.
pub const APP_REPORT_SKIPPED: &str = "app.report_skipped";
/// Lifetime of an app JWT: short, the proxy re-signs near expiry.
pub const APP_JWT_TTL: Duration = Duration::from_secs(5 * 60);

/// Checks an app against the cluster before it is written: its
/// `allowed_spiffe_ids` are this trust domain's, its `public_addr` is free.
pub fn check_app(state: &AuthState, app: &App) -> Result<(), Status> {
    svid::check_trust_domain(app, &state.cluster)
        .map_err(|e| Status::invalid_argument(format!("app {:?}: {e}", app.metadata.name)))?;
    check_public_addr_free(state, app)
}

/// Two apps on one `public_addr` would make a proxy's choice arbitrary.
pub fn check_public_addr_free(state: &AuthState, app: &App) -> Result<(), Status> {
    let addr = &app.spec.public_addr;
    match state.cache.apps().into_iter().find(|o| {
        o.metadata.name != app.metadata.name && o.spec.public_addr.eq_ignore_ascii_case(addr)
    }) {
        Some(other) => Err(Status::invalid_argument(format!(
            "app {:?}: spec.public_addr {addr:?} is already app {:?}'s; each app needs its own name",
            app.metadata.name, other.metadata.name
        ))),
        None => Ok(()),
    }
}

/// The apps `proxy` may serve (its roles' `app_server_labels`), or why not.
pub fn served_apps(state: &AuthState, proxy: &ClientIdentity) -> Result<Vec<App>, Status> {
    let auth =
        bot_authority(state, &proxy.bot, &proxy.bot_uid).map_err(Status::permission_denied)?;
    let holder = ClientIdentity {
        roles: auth.roles.clone(),
        ..proxy.clone()
    };
    crate::issuance::check_locks(state, &holder, &[])?;
    Ok(state
        .cache
        .apps()
        .into_iter()
        .filter(|a| {
            auth.role_set
                .labels_match(sigil_types::LabelField::AppServer, &a.metadata.labels)
        })
        .collect())
}

/// The app named `name` if `proxy` may serve it.
fn served_app(state: &AuthState, proxy: &ClientIdentity, name: &str) -> Result<App, Status> {
    served_apps(state, proxy)?
        .into_iter()
        .find(|a| a.metadata.name == name)
        .ok_or_else(|| {
            Status::permission_denied(format!(
                "bot {:?} may not serve app {name:?} (no app named so, or no role's \
                 app_server_labels match its labels)",
                proxy.bot
            ))
        })
}

/// The caller of a proxied request, from its certificate, with its current roles.
struct Decision {
    caller: ClientIdentity,
    roles: Vec<String>,
    refused: Option<String>,
    /// The caller presented an X.509-SVID for this SPIFFE ID.
    spiffe_id: Option<String>,
}

async fn decide(state: &AuthState, app: &App, cert_der: &[u8]) -> Result<Decision, Status> {
    let refuse = |caller: ClientIdentity, why: String| Decision {
        caller,
        roles: Vec::new(),
        refused: Some(why),
        spiffe_id: None,
    };
    let (caller, not_after, svid) = match caller::identify(state, cert_der)? {
        Ok(c) => (c.id, c.not_after, c.svid),
        Err((caller, why)) => return Ok(refuse(caller, why)),
    };
    let spiffe_id = svid.as_ref().map(|s| s.spiffe_id.clone());
    // Every refusal from here names the SVID too (audit).
    let refuse = |caller, why| Decision {
        spiffe_id: spiffe_id.clone(),
        ..refuse(caller, why)
    };
    if caller.cluster != state.cluster {
        return Ok(refuse(
            caller,
            "the identity belongs to another cluster".into(),
        ));
    }
    if not_after <= OffsetDateTime::now_utc() {
        return Ok(refuse(caller, "the client certificate has expired".into()));
    }
    let auth = match bot_authority(state, &caller.bot, &caller.bot_uid) {
        Ok(a) => a,
        Err(why) => return Ok(refuse(caller, why)),
    };
    let Some(inst) = current_instance(state, &caller).await? else {
        return Ok(refuse(caller, "this bot instance was removed".into()));
    };
    if let Some(why) = superseded(&caller, &inst) {
        return Ok(refuse(caller, why));
    }
    // An SVID carries no join facts: its holder's, for login templates.
    let caller = match &svid {
        Some(_) => caller::with_join_facts(caller, &inst),
        None => caller,
    };
    // The certificate's roles and the current ones: a lock on either applies.
    let mut targets = authz::lock_targets(&caller);
    targets.extend(
        auth.roles
            .iter()
            .cloned()
            .map(sigil_types::LockTarget::Role),
    );
    // An SVID caller: a lock on its SPIFFE ID cuts it off too, and one on
    // a login its holder's roles give (its SVID carries none).
    if let Some(id) = &spiffe_id {
        targets.push(sigil_types::LockTarget::SpiffeId(id.clone()));
        targets.extend(
            auth.logins_for(&caller)
                .into_iter()
                .map(sigil_types::LockTarget::Login),
        );
    }
    if let Some(lock) = state.cache.lock_for(&targets) {
        return Ok(refuse(caller, authz::locked(&lock).message().to_string()));
    }
    if !auth
        .role_set
        .labels_match(sigil_types::LabelField::App, &app.metadata.labels)
    {
        let why = format!(
            "bot {:?} may not reach app {:?}: no role's app_labels match its labels (or a deny does)",
            caller.bot, app.metadata.name
        );
        return Ok(refuse(caller, why));
    }
    // Both the bot's roles (above) and, for an SVID, the app's
    // allowed_spiffe_ids, its revocation and its grant.
    if let Some(s) = &svid {
        let granted = crate::workload::granted_identities(state, &auth.role_set);
        if let Some(why) = svid::refusal(
            app,
            &state.cluster,
            &s.spiffe_id,
            &s.serial_hex,
            |serial| state.cache.is_revoked(serial),
            &granted,
        ) {
            return Ok(refuse(caller, why));
        }
    }
    Ok(Decision {
        caller,
        roles: auth.roles,
        refused: None,
        spiffe_id,
    })
}

/// The caller's bot instance record, if it still exists.
async fn current_instance(
    state: &AuthState,
    caller: &ClientIdentity,
) -> Result<Option<sigil_types::BotInstance>, Status> {
    let Some(item) = authz::instance_item(state, caller).await? else {
        return Ok(None);
    };
    serde_json::from_slice(&item.value)
        .map(Some)
        .map_err(|e| Status::internal(format!("undecodable bot instance: {e}")))
}

/// Why the caller's certificate is no longer current, if (an agent's own
/// identity) a renewal superseded it — what every other call refuses too
/// (authz::check_current). Unlike there, a stale generation is only refused
/// here, never taken for a stolen copy: the renewal protocol is where theft
/// is judged, and a proxy connection may simply have outlived its holder's
/// renewal.
fn superseded(caller: &ClientIdentity, inst: &sigil_types::BotInstance) -> Option<String> {
    if !caller.is_agent_identity() || inst.spec.generation == caller.generation {
        return None;
    }
    Some(format!(
        "this agent credential (generation {}) was superseded by a renewal (now {}): reconnect with the current one",
        caller.generation, inst.spec.generation
    ))
}

/// `AuthorizeApp`: the decision for one caller and app, right now.
pub async fn authorize(
    state: &AuthState,
    proxy: &ClientIdentity,
    req: &AuthorizeAppRequest,
) -> Result<AuthorizeAppResponse, Status> {
    let app = served_app(state, proxy, &req.app)?;
    let d = decide(state, &app, &req.caller_cert_der).await?;
    Ok(AuthorizeAppResponse {
        allowed: d.refused.is_none(),
        reason: d.refused.unwrap_or_default(),
        bot: d.caller.bot,
        instance: d.caller.instance_id,
        roles: d.roles,
        spiffe_id: d.spiffe_id.unwrap_or_default(),
    })
}

/// `SignAppJwt`: the identity assertion for an allowed caller.
pub async fn sign_jwt(
    state: &AuthState,
    proxy: &ClientIdentity,
    req: &AuthorizeAppRequest,
) -> Result<AppJwt, Status> {
    let app = served_app(state, proxy, &req.app)?;
    let d = decide(state, &app, &req.caller_cert_der).await?;
    if let Some(why) = d.refused {
        return Err(Status::permission_denied(why));
    }
    if sigil_types::validate_path_segment(&d.caller.bot).is_err() {
        return Err(Status::failed_precondition(format!(
            "bot {:?}: its name cannot be a SPIFFE ID path segment, so no app JWT can name it",
            d.caller.bot
        )));
    }
    let mut extra = Map::new();
    extra.insert("sigil_bot".into(), Value::from(d.caller.bot.clone()));
    extra.insert(
        "sigil_instance".into(),
        Value::from(d.caller.instance_id.clone()),
    );
    extra.insert("roles".into(), Value::from(d.roles));
    extra.insert("app".into(), Value::from(app.metadata.name.clone()));
    if let Some(id) = &d.spiffe_id {
        // The workload identity the caller presented, next to its holder.
        extra.insert("spiffe_id".into(), Value::from(id.clone()));
    }
    // An SVID caller is its workload, with `sigil_bot` naming the holder.
    let sub = match &d.spiffe_id {
        Some(id) => id.clone(),
        None => format!("spiffe://{}/sigil/bot/{}", state.cluster, d.caller.bot),
    };
    let claims = JwtSvidClaims {
        sub,
        aud: vec![format!("https://{}", app.spec.public_addr)],
        iss: Some(state.jwt_issuer.clone()),
        ttl: APP_JWT_TTL,
        extra,
    };
    let jwt = state
        .cas()
        .jwt
        .signer
        .sign_jwt_svid(&claims)
        .map_err(|e| Status::internal(format!("signing the app JWT: {e}")))?;
    metrics::counter!("sigil_app_jwts_signed_total").increment(1);
    // Every assertion a proxy had signed is on record, with the proxy that
    // asked: a proxy can name any caller whose certificate it saw.
    let ev = crate::audit::event(
        APP_JWT_SIGNED,
        serde_json::json!({
            "app": app.metadata.name, "bot": d.caller.bot, "bot_instance": d.caller.instance_id,
            "proxy": proxy.bot, "proxy_instance": proxy.instance_id,
            "expires": jwt.expires.unix_timestamp(),
            "spiffe_id": d.spiffe_id,
        }),
    );
    state
        .store
        .commit(sigil_store::Txn {
            ops: Vec::new(),
            audit: vec![ev],
        })
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    Ok(AppJwt {
        token: jwt.token,
        expires_unix: jwt.expires.unix_timestamp(),
    })
}
