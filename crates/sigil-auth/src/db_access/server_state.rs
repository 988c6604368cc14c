//! `WatchDatabaseServer`: a database server's client CAs and CRLs, pushed
//! at once and again whenever the revoked set changes (a lock, a removed
//! bot) or the CAs do, so `ssl_crl_file` follows a lock within a second or
//! two. Re-sent well before the CRL's nextUpdate: PostgreSQL refuses every
//! client certificate once its CRL has expired.

use std::collections::HashMap;
use std::time::Duration;

use sigil_pki::{ClientIdentity, RevokedSerial};
use sigil_proto::v1::DatabaseServerState;
use sigil_types::LockTarget;
use time::OffsetDateTime;
use tokio::sync::mpsc;
use tonic::Status;

use super::records::{DbCertRecord, Locked, revoked};
use crate::authz;
use crate::issuance::bot_authority;
use crate::keys;
use crate::state::{AuthState, SharedState};

/// Recompute at least this often (a lock with a TTL ends on its own; a
/// certificate issued while a lock was being added is caught here).
const RECHECK_EVERY: Duration = Duration::from_secs(15);
/// How long a CRL is valid.
const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// Re-sign and re-send an unchanged CRL this often.
const RESEND_EVERY: Duration = Duration::from_secs(3600);

/// Stream states to `tx` until the server agent goes away or may no longer serve.
pub async fn watch(
    state: SharedState,
    id: ClientIdentity,
    service: String,
    tx: mpsc::Sender<Result<DatabaseServerState, Status>>,
) {
    let mut changes = state.cache.subscribe();
    let mut epochs = state.ca_epoch.subscribe();
    let mut last: Option<(DatabaseServerState, tokio::time::Instant)> = None;
    loop {
        changes.borrow_and_update();
        epochs.borrow_and_update();
        let next = server_state(&state, &id, &service).await;
        let stop = next.is_err();
        let changed = match (&next, &last) {
            (Ok(n), Some((l, at))) => {
                n.revoked_serials != l.revoked_serials
                    || n.client_ca_pem != l.client_ca_pem
                    || at.elapsed() >= RESEND_EVERY
            }
            _ => true,
        };
        if changed {
            if tx.send(next.clone()).await.is_err() || stop {
                return;
            }
            last = next.ok().map(|s| (s, tokio::time::Instant::now()));
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            r = epochs.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(RECHECK_EVERY) => {}
            _ = tx.closed() => return,
        }
    }
}

/// The state for one database server right now. Refused when the server's
/// own bot is locked or removed, the database is gone, or no role of the
/// bot allows its labels (`db_server_labels`).
pub async fn server_state(
    state: &AuthState,
    host: &ClientIdentity,
    service: &str,
) -> Result<DatabaseServerState, Status> {
    let auth = bot_authority(state, &host.bot, &host.bot_uid).map_err(Status::permission_denied)?;
    let mut targets = authz::lock_targets(host);
    targets.extend(auth.roles.iter().cloned().map(LockTarget::Role));
    if let Some(l) = state.cache.lock_for(&targets) {
        return Err(authz::locked(&l));
    }
    let db = super::database(state, service)?;
    super::check_server_role(&host.bot, &auth.role_set, &db)?;

    let items = state
        .store
        .list(keys::DB_CERTS)
        .await
        .map_err(|e| Status::unavailable(format!("storage: {e}")))?;
    let records: Vec<DbCertRecord> = items
        .iter()
        .filter_map(|i| match serde_json::from_slice(&i.value) {
            Ok(r) => Some(r),
            Err(e) => {
                tracing::error!(key = %i.key, error = %e, "undecodable database certificate record");
                None
            }
        })
        .collect();
    let uids: HashMap<String, String> = state
        .cache
        .bots()
        .into_iter()
        .map(|b| (b.metadata.name.clone(), b.spec.uid.clone()))
        .collect();
    let now = OffsetDateTime::now_utc();
    let revoked_serials = revoked(
        &records,
        &Locked::from_locks(&state.cache.locks()),
        &uids,
        now,
    );
    let entries: Vec<RevokedSerial> = revoked_serials
        .iter()
        .map(|s| RevokedSerial {
            serial_hex: s.clone(),
            revoked_at: now,
        })
        .collect();
    let cas = state.cas();
    // One CRL per trusted db-client CA, even when empty: PostgreSQL (OpenSSL
    // with CRL checking) refuses a client whose issuer has no CRL.
    let crl_number = u64::try_from(now.unix_timestamp_nanos() / 1_000_000).unwrap_or(0);
    let mut crl_pem = String::new();
    let mut client_ca_pem = String::new();
    for ca in &cas.db_client.trusted {
        let der = ca
            .sign_crl(crl_number, &entries, CRL_VALIDITY)
            .map_err(|e| Status::internal(format!("signing the database CRL: {e}")))?;
        crl_pem.push_str(&pem("X509 CRL", &der));
        client_ca_pem.push_str(&ca.cert_pem());
    }
    Ok(DatabaseServerState {
        client_ca_pem,
        crl_pem,
        revoked_serials,
    })
}

fn pem(label: &str, der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap_or_default());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
