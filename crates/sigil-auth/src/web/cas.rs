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
            let der = c
                .cert_pem
                .as_deref()
                .and_then(|pem| sigil_pki::pem_to_ders(pem, "CERTIFICATE").ok())
                .and_then(|d| d.into_iter().next());
            let (fingerprint, not_after) = match (der, &c.ssh_public_key) {
                (Some(d), _) => (
                    sigil_pki::spki_pin_of_cert(&d).unwrap_or_default(),
                    sigil_pki::cert_info(&d)
                        .map(|i| Value::from(i.not_after.unix_timestamp()))
                        .unwrap_or(Value::Null),
                ),
                // SSH CAs do not expire; the fingerprint is over the key line.
                (None, Some(ssh)) => (
                    format!("sha256:{}", sigil_pki::sha256_hex(ssh.as_bytes())),
                    Value::Null,
                ),
                _ => (String::new(), Value::Null),
            };
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
