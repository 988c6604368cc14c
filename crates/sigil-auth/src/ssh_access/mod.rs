//! SSH access for hosts that run stock OpenSSH, with no proxy in the path:
//! host certificates for the `ssh-host` output ([`issue_host_cert`]), and
//! what a host's sshd needs to decide every login offline ([`host_state`]):
//! the KRL for `RevokedKeys` and, for the host's labels, which bots may log
//! in as whom (read by the principals command the host agent installs).

mod host_state;

pub use host_state::{check_labels, host_state, watch};

use sigil_pki::ClientIdentity;
use sigil_proto::v1::{IssueSshHostCertRequest, SshHostCert};
use sigil_store::Txn;
use tonic::Status;

use crate::audit;
use crate::issuance::{self, bot_authority, effective_ttl};
use crate::state::AuthState;

/// At most this many principals in one host certificate.
pub const MAX_HOST_PRINCIPALS: usize = 64;

/// The key ID of a user certificate: what a KRL revokes by `key_id` and
/// what a host's principals command reads back (`%i`). The bot's uid makes
/// a certificate of a removed bot useless to a bot re-created under its name.
pub fn user_key_id(bot: &str, bot_uid: &str, instance_id: &str) -> String {
    format!("bot:{bot}:{bot_uid}:{instance_id}")
}

/// Issue a host certificate for principals the bot's roles allow; a
/// refusal is audited (`cert.denied`, aggregated in a flood).
pub async fn issue_host_cert(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueSshHostCertRequest,
) -> Result<SshHostCert, Status> {
    let result = issue(state, id, req).await;
    let refused = result.as_ref().err().filter(|e| {
        matches!(
            e.code(),
            tonic::Code::PermissionDenied | tonic::Code::InvalidArgument
        )
    });
    if let Some(e) = refused {
        // Bounded: the request was refused, perhaps for its size.
        let shown: Vec<String> = req
            .principals
            .iter()
            .take(MAX_HOST_PRINCIPALS)
            .map(|p| {
                sigil_types::text::escape_unsafe(&p.chars().take(255).collect::<String>())
                    .into_owned()
            })
            .collect();
        let ev = audit::event(
            audit::CERT_DENIED,
            serde_json::json!({
                "kind": "ssh_host", "bot": id.bot, "bot_instance": id.instance_id,
                "principals": shown, "reason": e.message(),
            }),
        );
        state.denials.record(state.store.as_ref(), ev).await;
    }
    result
}

async fn issue(
    state: &AuthState,
    id: &ClientIdentity,
    req: &IssueSshHostCertRequest,
) -> Result<SshHostCert, Status> {
    let auth = bot_authority(state, &id.bot, &id.bot_uid).map_err(Status::permission_denied)?;
    issuance::check_locks(state, id, &[])?;
    if req.principals.is_empty() {
        return Err(Status::invalid_argument(
            "principals: give the host's names and addresses (at least one)",
        ));
    }
    if req.principals.len() > MAX_HOST_PRINCIPALS {
        return Err(Status::invalid_argument(format!(
            "principals: at most {MAX_HOST_PRINCIPALS} names in one host certificate"
        )));
    }
    for (i, p) in req.principals.iter().enumerate() {
        sigil_types::validate_host_principal(p, false)
            .map_err(|e| Status::invalid_argument(format!("principals[{i}]: {e}")))?;
        if !auth.role_set.allows_ssh_host_principal(p) {
            return Err(Status::permission_denied(format!(
                "principals[{i}]: {p:?} is not allowed by the roles of bot {:?} (allow.ssh_host_principals)",
                id.bot
            )));
        }
    }
    let ttl = effective_ttl(req.ttl_seconds, auth.max_ttl);
    let key_id = format!("host:{}:{}", id.bot, id.instance_id);
    let cas = state.cas();
    let cert = crate::telemetry::issue("ssh_host", || {
        cas.ssh_host
            .signer
            .issue_host_cert(&req.ssh_public_key, &key_id, &req.principals, ttl)
    })
    .map_err(issuance::pki_error)?;
    let event = audit::event(
        audit::CERT_ISSUED,
        serde_json::json!({
            "kind": "ssh_host", "ca": "ssh-host", "serial": cert.serial.to_string(),
            "ttl_seconds": ttl.as_secs(), "bot": id.bot, "bot_instance": id.instance_id,
            "principals": req.principals,
        }),
    );
    state
        .store
        .commit(Txn {
            ops: vec![],
            audit: vec![event],
        })
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    metrics::counter!("sigil_certs_issued_total", "kind" => "ssh_host").increment(1);
    Ok(SshHostCert {
        ssh_cert: cert.openssh,
        ssh_user_ca: cas.ssh_user_cas(),
        expires_unix: cert.not_after.unix_timestamp(),
        serial: cert.serial,
    })
}
