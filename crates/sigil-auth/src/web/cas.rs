//! The console's CAs page: each CA's key type, fingerprint, expiry and
//! rotation phase (what `sigil status` and `sigil ca status` show; `status
//! read`, as for them).

use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::context::Web;
use crate::api::ca_rotate;

/// `GET /web/api/cas`
pub async fn cas(web: Web) -> Response {
    if let Err(r) = web.authorize("status", "read").await {
        return r;
    }
    let cas = web.state.cas();
    let rotations = ca_rotate::statuses(&cas);
    let items: Vec<Value> = cas
        .stored
        .iter()
        .map(|c| {
            let (fingerprint, not_after) = crate::api::ca_export::fingerprint_and_expiry(c);
            let not_after = not_after.map_or(Value::Null, |t| Value::from(t.unix_timestamp()));
            let purpose = c.purpose.as_str();
            let rotation = rotations.iter().find(|r| r.purpose == purpose);
            json!({
                "purpose": purpose,
                "key_algorithm": serde_json::to_value(c.key.algorithm).unwrap_or(Value::Null),
                "key_manager": c.key.manager,
                "fingerprint": fingerprint,
                "not_after": not_after,
                "intermediate": c.chain_pem.is_some(),
                "phase": rotation.map(|r| r.phase.as_str()).unwrap_or("standby"),
                "rotation_mode": rotation.map(|r| r.mode.as_str()).unwrap_or(""),
                "next_phase": rotation.map(|r| r.next_phase.as_str()).unwrap_or(""),
                "next_phase_unix": rotation.map(|r| r.next_phase_unix).unwrap_or(0),
            })
        })
        .collect();
    axum::Json(json!({
        "ca_pin": web.state.ca_pin(),
        "cas": items,
    }))
    .into_response()
}
