//! The console's JSON API. Each call takes a [`Web`] (a live session, its
//! principal as an admin caller, CSRF checked for changes) and asks the
//! admin API's authorisation for the same kind and verb its CLI twin needs.

use std::collections::HashMap;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{Path, Request, State};
use axum::http::Uri;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sigil_store::AuditQuery;
use sigil_types::{AnyResource, Lock, LockSpec, LockTarget, Metadata};
use time::OffsetDateTime;

use super::context::{self, Web, error, status_response};
use super::session::{self, CSRF_COOKIE, SESSION_COOKIE};
use crate::api::resources;
use crate::keys;
use crate::state::SharedState;

type Result<T> = std::result::Result<T, Response>;

/// Largest request body the console reads (a lock's message is the largest).
const MAX_BODY: usize = 16 * 1024;
/// Instances per page unless asked otherwise (at most the admin API's page).
const INSTANCE_PAGE: usize = 50;
/// The audit page reads at most this many events per query, the newest
/// (or, with `since`, the first after it), then filters by bot.
const AUDIT_SCAN: usize = 5000;
/// Longest lifetime a lock made here may have (as the admin API's).
const MAX_LOCK_TTL_SECS: u64 = 10 * 365 * 24 * 3600;

fn ok(v: Value) -> Response {
    axum::Json(v).into_response()
}

pub(super) fn bad(msg: impl std::fmt::Display) -> Response {
    error(StatusCode::BAD_REQUEST, &msg.to_string())
}

/// The query string's parameters (percent-decoded; `+` is a space).
pub(super) fn query(req_uri: &axum::http::Uri) -> HashMap<String, String> {
    fn decode(s: &str) -> String {
        let b = s.as_bytes();
        let mut out = Vec::with_capacity(b.len());
        let mut i = 0;
        while i < b.len() {
            match b[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < b.len() => {
                    let hex = |c: u8| (c as char).to_digit(16);
                    match (hex(b[i + 1]), hex(b[i + 2])) {
                        (Some(h), Some(l)) => {
                            out.push((h * 16 + l) as u8);
                            i += 2;
                        }
                        _ => out.push(b'%'),
                    }
                }
                c => out.push(c),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    req_uri
        .query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (decode(k), decode(v))
        })
        .collect()
}

pub(super) async fn body_json(body: Body) -> Result<Value> {
    let bytes: Bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .map_err(|_| bad(format!("the request body is over {MAX_BODY} bytes")))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("the request body is not JSON: {e}")))
}

fn cookie_header(name: &str, value: &str, http_only: bool, max_age: i64) -> HeaderValue {
    let http_only = if http_only { "; HttpOnly" } else { "" };
    HeaderValue::from_str(&format!(
        "{name}={value}; Path=/; Secure{http_only}; SameSite=Strict; Max-Age={max_age}"
    ))
    .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// `POST /web/api/login {"secret": "..."}`: spend a login link, set the
/// session and CSRF cookies. A refusal never says why (the audit log does).
pub async fn login(State(state): State<SharedState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let remote = context::remote_of(&parts);
    if let Err(why) = context::same_origin(&parts) {
        context::refuse_csrf(&state, "anonymous", why, &remote, parts.uri.path()).await;
        return error(StatusCode::FORBIDDEN, "refused: cross-site login");
    }
    let secret = match body_json(body).await {
        Ok(v) => v
            .get("secret")
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string(),
        Err(r) => return r,
    };
    // A browser logging in leaves the session it had: it never goes on
    // acting for someone without noticing (and a forced login ends it).
    if let Some(old) = context::session_of(&state, &parts.headers).await
        && let Err(e) = session::end(&state, &old, &remote).await
    {
        return context::unavailable("ending the previous session", &e.message());
    }
    let Ok(s) = session::redeem(&state, &secret, &remote).await else {
        return error(
            StatusCode::FORBIDDEN,
            "login refused: the link is used, expired or wrong; run `sigil admin login` for a new one",
        );
    };
    with_session_cookies(ok(json!({"ok": true})), &s)
}

/// `resp` setting the cookies of the new session `s`.
pub(super) fn with_session_cookies(resp: impl IntoResponse, s: &session::NewSession) -> Response {
    let mut resp = resp.into_response();
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, &s.id, true, s.max_age),
    );
    h.append(
        header::SET_COOKIE,
        cookie_header(CSRF_COOKIE, &s.csrf, false, s.max_age),
    );
    resp
}

/// `POST /web/api/logout`: delete the session record, clear the cookies.
/// Needs the session, its CSRF token and this origin, but not a caller that
/// may still act: a locked or removed principal can always log out.
pub async fn logout(State(state): State<SharedState>, req: Request) -> Response {
    let (parts, _) = req.into_parts();
    let remote = context::remote_of(&parts);
    if let Some(s) = context::session_of(&state, &parts.headers).await {
        if let Err(r) = context::check_change(&state, &parts, &s, &remote).await {
            return r;
        }
        if let Err(e) = session::end(&state, &s, &remote).await {
            return context::unavailable("logging out", &e.message());
        }
    }
    let mut resp = ok(json!({"ok": true}));
    let h = resp.headers_mut();
    h.append(
        header::SET_COOKIE,
        cookie_header(SESSION_COOKIE, "", true, 0),
    );
    h.append(header::SET_COOKIE, cookie_header(CSRF_COOKIE, "", false, 0));
    resp
}

/// `GET /web/api/session`: who the console acts as, and until when.
pub async fn whoami(web: Web) -> Response {
    ok(json!({
        "actor": web.actor(),
        "ends_unix": web.session.record.ends_unix(),
        "cluster": web.state.cluster,
    }))
}

/// `GET /web/api/bots`: every bot with its roles and instance count.
pub async fn bots(web: Web) -> Response {
    if let Err(r) = web.authorize("bot", "list").await {
        return r;
    }
    // The counts need the instance list right too; without it they are omitted.
    let counts =
        crate::authz::authorize_admin(&web.state, &web.caller, "bot_instance", "list").is_ok();
    let mut bots = web.state.cache.bots();
    bots.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    let mut out = Vec::with_capacity(bots.len());
    for b in bots {
        let name = &b.metadata.name;
        let instances = if counts {
            match web.state.store.count(&keys::bot_instances_of(name)).await {
                Ok(n) => Value::from(n),
                Err(e) => return context::unavailable("counting instances", &e),
            }
        } else {
            Value::Null
        };
        let locked = web
            .state
            .cache
            .lock_for(&[LockTarget::Bot(name.clone())])
            .is_some();
        out.push(json!({
            "name": name, "roles": b.spec.roles, "instances": instances, "locked": locked,
            "created_at": b.spec.created_at.map(|t| t.unix_timestamp()),
        }));
    }
    ok(json!({ "bots": out }))
}

/// `GET /web/api/instances?bot=NAME&page_token=T&limit=N`: one page of a
/// bot's instances (or all bots'), each with its health badge.
pub async fn instances(web: Web, uri: Uri) -> Response {
    if let Err(r) = web.authorize("bot_instance", "list").await {
        return r;
    }
    let q = query(&uri);
    let bot = q.get("bot").map(String::as_str).unwrap_or_default();
    if !bot.is_empty()
        && let Err(e) = sigil_types::check_name("bot", bot)
    {
        return bad(format!("bot: {e}"));
    }
    let limit = match q.get("limit").map(|l| l.parse::<usize>()) {
        None => INSTANCE_PAGE,
        Some(Ok(n)) if (1..=resources::MAX_PAGE_ITEMS).contains(&n) => n,
        Some(_) => {
            return bad(format!("limit: give 1 to {}", resources::MAX_PAGE_ITEMS));
        }
    };
    let token = q.get("page_token").map(String::as_str).unwrap_or_default();
    let (page, next) = match instance_page(&web.state, bot, limit, token).await {
        Ok(p) => p,
        Err(r) => return r,
    };
    let now = OffsetDateTime::now_utc();
    let items: Vec<Value> = page
        .iter()
        .filter_map(|item| {
            let i = serde_json::from_slice::<sigil_types::BotInstance>(&item.value).ok()?;
            Some(instance_summary(&web.state, &i, item.expires, now))
        })
        .collect();
    ok(json!({ "instances": items, "next_page_token": next }))
}

/// One page of instance records, as the admin API pages them (one index
/// range scan from the key in `page_token`, hex), but with the store's
/// expiry of each record, which says when its credential ends.
async fn instance_page(
    state: &crate::state::AuthState,
    bot: &str,
    limit: usize,
    page_token: &str,
) -> Result<(Vec<sigil_store::Item>, String)> {
    let prefix = if bot.is_empty() {
        keys::BOT_INSTANCES.to_string()
    } else {
        keys::bot_instances_of(bot)
    };
    let after = match page_token {
        "" => String::new(),
        t => hex::decode(t)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .filter(|k| k.starts_with(&prefix))
            .ok_or_else(|| bad("page_token is not one this list returned"))?,
    };
    let mut items = state
        .store
        .list_page(&prefix, &after, limit + 1)
        .await
        .map_err(|e| context::unavailable("listing instances", &e))?;
    let next = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .map(|i| hex::encode(i.key.as_bytes()))
            .unwrap_or_default()
    } else {
        String::new()
    };
    Ok((items, next))
}

fn instance_summary(
    state: &crate::state::AuthState,
    i: &sigil_types::BotInstance,
    record_expires: Option<OffsetDateTime>,
    now: OffsetDateTime,
) -> Value {
    let s = &i.spec;
    let mut targets = vec![
        LockTarget::Bot(s.bot_name.clone()),
        LockTarget::BotInstance(s.instance_id.clone()),
    ];
    if let Some(b) = state.cache.bot(&s.bot_name) {
        targets.extend(b.spec.roles.into_iter().map(LockTarget::Role));
    }
    let locked = state.cache.lock_for(&targets).is_some();
    // The record is kept `instance_retention` past its newest credential.
    let retention = time::Duration::try_from(state.instance_retention).unwrap_or_default();
    let not_after = record_expires.map(|e| e - retention);
    let last_auth = s.latest_authentication();
    let health = sigil_types::instance_health::instance_health(
        now,
        locked,
        last_auth.map(|a| a.time),
        not_after,
    );
    let hb = s.latest_heartbeat();
    json!({
        "bot": s.bot_name,
        "instance_id": s.instance_id,
        "join_method": s.join_method,
        "join_attributes": s.initial_authentication.as_ref().map(|a| &a.attributes),
        "generation": s.generation,
        "last_authentication": last_auth.map(|a| json!({
            "time": a.time.unix_timestamp(), "method": a.method, "remote_addr": a.remote_addr,
        })),
        "last_heartbeat": hb.map(|h| json!({
            "time": h.time.unix_timestamp(), "hostname": h.hostname, "os": h.os,
            "version": h.version, "uptime_seconds": h.uptime_seconds,
        })),
        "credential_expires": not_after.map(|t| t.unix_timestamp()),
        "health": health,
    })
}

/// `GET /web/api/locks`
pub async fn locks(web: Web) -> Response {
    if let Err(r) = web.authorize("lock", "list").await {
        return r;
    }
    match resources::list(&web.state, "lock", "", 0, "").await {
        Ok((page, next)) => {
            let items: Vec<Value> = page
                .iter()
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect();
            // One page (the admin API's largest); the page says when there are more.
            ok(json!({ "locks": items, "more": !next.is_empty() }))
        }
        Err(e) => status_response(e),
    }
}

/// `POST /web/api/locks {"target_kind", "target_value", "ttl_seconds", "message"}`
pub async fn add_lock(web: Web, body: Body) -> Response {
    if let Err(r) = web.authorize("lock", "create").await {
        return r;
    }
    let v = match body_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    match new_lock(&web, &v) {
        Ok(lock) => {
            let actor = web.actor();
            match resources::create_from(
                &web.state,
                AnyResource::Lock(lock),
                false,
                &actor,
                Some(&web.origin()),
            )
            .await
            {
                Ok(json) => (
                    StatusCode::CREATED,
                    [(header::CONTENT_TYPE, "application/json")],
                    json,
                )
                    .into_response(),
                Err(e) => status_response(e),
            }
        }
        Err(why) => bad(why),
    }
}

/// The lock a request body describes, checked as `sigil locks add` checks it.
fn new_lock(web: &Web, v: &Value) -> std::result::Result<Lock, String> {
    let field = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or_default();
    let (kind, value) = (field("target_kind"), field("target_value").trim());
    if value.is_empty() {
        return Err("target_value: say what to lock".into());
    }
    let value = if kind == "token" {
        // Locks never hold a token's secret: its hash form.
        keys::token_ref(value)
    } else {
        value.to_string()
    };
    let target = LockTarget::from_parts(kind, value).ok_or_else(|| {
        format!(
            "target_kind {kind:?}: use one of {}",
            sigil_types::lock::LOCK_TARGET_KINDS.join(", ")
        )
    })?;
    target
        .check()
        .map_err(|e| format!("target_value: {}", e.message))?;
    let ttl = match v.get("ttl_seconds") {
        None | Some(Value::Null) => 0,
        Some(t) => t
            .as_u64()
            .filter(|t| *t <= MAX_LOCK_TTL_SECS)
            .ok_or("ttl_seconds: a whole number of seconds, at most 10 years")?,
    };
    let now = OffsetDateTime::now_utc();
    let expires = (ttl > 0).then(|| now + time::Duration::seconds(ttl as i64));
    Ok(Lock::new(
        Metadata {
            name: uuid::Uuid::new_v4().to_string(),
            expires,
            ..Default::default()
        },
        LockSpec {
            target,
            message: field("message").to_string(),
            created_by: web.actor(),
            created_at: Some(now),
        },
    ))
}

/// `DELETE /web/api/locks/{name}`
pub async fn remove_lock(web: Web, Path(name): Path<String>) -> Response {
    if let Err(r) = web.authorize("lock", "delete").await {
        return r;
    }
    if let Err(e) = sigil_types::check_name("lock", &name) {
        return bad(format!("lock name: {e}"));
    }
    match resources::delete_from(&web.state, "lock", &name, &web.actor(), Some(&web.origin())).await
    {
        Ok(()) => ok(json!({"ok": true})),
        Err(e) => status_response(e),
    }
}

/// `GET /web/api/audit?type=T&bot=B&since=UNIX&limit=N`: the newest matching
/// events first.
pub async fn audit(web: Web, uri: Uri) -> Response {
    if let Err(r) = web.authorize("audit", "list").await {
        return r;
    }
    let q = query(&uri);
    let get = |k: &str| q.get(k).map(|s| s.trim()).filter(|s| !s.is_empty());
    let since = match get("since").map(|s| s.parse::<i64>()) {
        None => None,
        Some(Ok(t)) => match OffsetDateTime::from_unix_timestamp(t) {
            Ok(t) => Some(t),
            Err(_) => return bad("since: a Unix time in seconds"),
        },
        Some(Err(_)) => return bad("since: a Unix time in seconds"),
    };
    let limit = match get("limit").map(|l| l.parse::<usize>()) {
        None => 100,
        Some(Ok(n)) if (1..=1000).contains(&n) => n,
        Some(_) => return bad("limit: give 1 to 1000"),
    };
    let bot = get("bot").map(str::to_string);
    let head_seq = match web.state.store.audit_head().await {
        Ok((seq, _)) => seq,
        Err(e) => return context::unavailable("reading the audit head", &e),
    };
    let after_seq = match since {
        Some(_) => None,
        None => Some((head_seq - AUDIT_SCAN as i64).max(0)),
    };
    let records = match web
        .state
        .store
        .audit_query(AuditQuery {
            since,
            event_type: get("type").map(str::to_string),
            after_seq,
            limit: Some(AUDIT_SCAN),
        })
        .await
    {
        Ok(r) => r,
        Err(e) => return context::unavailable("reading the audit log", &e),
    };
    let by_bot = |f: &Value| super::tail::matches_bot(f, bot.as_deref());
    let events: Vec<&sigil_store::AuditRecord> = records
        .iter()
        .rev()
        .filter(|r| by_bot(&r.fields))
        .take(limit)
        .collect();
    // The live tail continues from the head as of this answer.
    ok(json!({ "events": events, "head_seq": head_seq }))
}

/// `GET /web/api/audit/verify`: the chain's state and head hash.
pub async fn verify_audit(web: Web) -> Response {
    if let Err(r) = web.authorize("audit", "read").await {
        return r;
    }
    let cps = &web.state.checkpoints;
    match cps.verify(None).await {
        Ok(v) => {
            let (bad_seq, reason) = v.problem.clone().unwrap_or_default();
            ok(json!({
                "intact": v.problem.is_none(),
                "count": v.count,
                "head_hash": v.head,
                "bad_seq": bad_seq,
                "reason": reason,
                "checkpoints_checked": v.checked,
                "audit_public_key": cps.public_key().to_string(),
            }))
        }
        Err(e) => context::unavailable("verifying the audit log", &format!("{e:#}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode() {
        let uri: axum::http::Uri =
            "/x?bot=ci%2Dbot&type=lock.created&empty=&since=12+3&bad=%zz&end=%4"
                .parse()
                .unwrap();
        let q = query(&uri);
        assert_eq!(q["bot"], "ci-bot");
        assert_eq!(q["type"], "lock.created");
        assert_eq!(q["empty"], "");
        assert_eq!(q["since"], "12 3");
        assert_eq!(q["bad"], "%zz");
        assert_eq!(q["end"], "%4");
    }
}
