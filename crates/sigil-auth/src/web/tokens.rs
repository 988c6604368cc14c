//! The console's Tokens page: list (secrets only in hash form, as `sigil
//! tokens ls`), create a `token`-method join token for a bot (the secret is
//! shown once, in this answer only), delete. Creating needs `token create`
//! and every role of the bot, exactly as `sigil tokens add`.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Path;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use sigil_types::AnyResource;

use super::api::{bad, body_json};
use super::context::{Web, status_response};
use crate::api::{admin_tokens, resources};
use crate::escalation;

/// Longest lifetime of a join token made here.
const MAX_TOKEN_TTL_SECS: u64 = 7 * 24 * 3600;

/// `GET /web/api/tokens`
pub async fn list(web: Web) -> Response {
    if let Err(r) = web.authorize("token", "list").await {
        return r;
    }
    match resources::list(&web.state, "token", "", 0, "").await {
        Ok((page, next)) => {
            let items: Vec<Value> = page
                .iter()
                .filter_map(|j| serde_json::from_str(j).ok())
                .collect();
            axum::Json(json!({"tokens": items, "more": !next.is_empty()})).into_response()
        }
        Err(e) => status_response(e),
    }
}

/// `POST /web/api/tokens {"bot", "ttl_seconds"}`: the answer holds the secret.
pub async fn create(web: Web, body: Body) -> Response {
    if let Err(r) = web.authorize("token", "create").await {
        return r;
    }
    let v = match body_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let bot = v.get("bot").and_then(Value::as_str).unwrap_or_default();
    if let Err(e) = sigil_types::check_name("bot", bot) {
        return bad(format!("bot: {e}"));
    }
    if web.state.cache.bot(bot).is_none() {
        return bad(format!("bot {bot:?} not found"));
    }
    let ttl = match v.get("ttl_seconds") {
        None | Some(Value::Null) => sigil_types::DEFAULT_TOKEN_TTL,
        Some(t) => match t.as_u64().filter(|t| (1..=MAX_TOKEN_TTL_SECS).contains(t)) {
            Some(t) => Duration::from_secs(t),
            None => return bad("ttl_seconds: 1 s to 7 days"),
        },
    };
    // Whoever holds the token becomes the bot: as strong as its roles.
    let check = escalation::check_token_for_bot(&web.state, &web.caller, bot);
    if let Err(e) = web.audited(check).await {
        return e;
    }
    let token = match admin_tokens::new_token(bot, ttl) {
        Ok(t) => t,
        Err(e) => return status_response(e),
    };
    let secret = token.metadata.name.clone();
    let expires = token.metadata.expires.map(|e| e.unix_timestamp());
    match resources::create_from(
        &web.state,
        AnyResource::Token(token),
        false,
        &web.actor(),
        Some(&web.origin()),
    )
    .await
    {
        Ok(_) => (
            StatusCode::CREATED,
            axum::Json(json!({
                "token": secret,
                "bot": bot,
                "expires_unix": expires,
                "ca_pin": web.state.ca_pin(),
                "auth_server": web.state.advertise_addr,
            })),
        )
            .into_response(),
        Err(e) => status_response(e),
    }
}

/// `DELETE /web/api/tokens/{name}`: by secret or hash form.
pub async fn remove(web: Web, Path(name): Path<String>) -> Response {
    if let Err(r) = web.authorize("token", "delete").await {
        return r;
    }
    if name.is_empty() || name.len() > 256 {
        return bad("token name: 1 to 256 characters");
    }
    match resources::delete_from(
        &web.state,
        "token",
        &name,
        &web.actor(),
        Some(&web.origin()),
    )
    .await
    {
        Ok(()) => axum::Json(json!({"ok": true})).into_response(),
        Err(e) => status_response(e),
    }
}

/// `POST /web/api/token-test {"name", "claims": {..}}`: whether these claims
/// pass the token's allow rules, and why each entry does or does not match
/// (`token read`; a POST only to carry the claims, it changes nothing).
pub async fn test(web: Web, body: Body) -> Response {
    if let Err(r) = web.authorize("token", "read").await {
        return r;
    }
    let v = match body_json(body).await {
        Ok(v) => v,
        Err(r) => return r,
    };
    let name = v.get("name").and_then(Value::as_str).unwrap_or_default();
    if name.is_empty() || name.len() > 256 {
        return bad("name: the token's name");
    }
    let Some(claims) = v.get("claims").filter(|c| c.is_object()) else {
        return bad("claims: a JSON object of the identity token's claims");
    };
    let json = match resources::get(&web.state, "token", name).await {
        Ok(j) => j,
        Err(e) => return status_response(e),
    };
    let token: sigil_types::Token = match serde_json::from_str(&json) {
        Ok(t) => t,
        Err(e) => return bad(format!("token {name:?}: {e}")),
    };
    let attrs = match token.spec.attributes_from_claims(claims) {
        Ok(a) => a,
        Err(e) => return bad(format!("claims: {e}")),
    };
    let d = token.spec.evaluate(&attrs);
    axum::Json(json!({
        "token": token.metadata.name,
        "join_method": token.spec.join_method.as_str(),
        "bot": token.spec.bot_name,
        "allowed": d.is_allowed(),
        "matched_rule": d.matched_rule,
        "explanation": d.explanation,
        "attributes": attrs,
    }))
    .into_response()
}
