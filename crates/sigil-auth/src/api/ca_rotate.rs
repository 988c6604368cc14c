//! `sigil ca rotate` and `sigil ca status`: the admin side of CA rotation
//! (crate::ca_rotation holds the state machine's effects).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sigil_pki::{CaPurpose, StoredKey};
use sigil_proto::v1::{
    CaRotationStatus, ImportCaRequest, RequestCaRequest, RequestCaResponse, RotateCaRequest,
};
use sigil_store::{Op, Txn};
use sigil_types::{RotationPhase, RotationTarget};
use time::OffsetDateTime;
use tonic::Status;

use super::ca_export::parse_purpose;
use crate::audit;
use crate::ca_rotation::{self, RotateRequest};
use crate::cluster::Cas;
use crate::keys;
use crate::state::AuthState;

/// Grace period of an automatic rotation when none is given (as Teleport's): longer
/// than the default maximum credential lifetime, so agents renew well within it.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(30 * 3600);

/// Applies one rotation step asked for by `by`; answers with the CA's state after it.
pub async fn rotate(
    state: &AuthState,
    by: &str,
    req: &RotateCaRequest,
) -> Result<CaRotationStatus, Status> {
    let purpose = parse_purpose(&req.purpose)?;
    let target = if req.phase.is_empty() {
        None
    } else {
        Some(RotationTarget::parse(&req.phase).ok_or_else(|| {
            Status::invalid_argument(format!(
                "phase {:?} is not one of init, update_clients, update_servers, standby, rollback",
                req.phase
            ))
        })?)
    };
    if target.is_some() && req.grace_period_seconds != 0 {
        return Err(Status::invalid_argument(
            "a grace period is for an automatic rotation (no phase); each manual step is made when you run it",
        ));
    }
    let grace = match req.grace_period_seconds {
        0 => DEFAULT_GRACE,
        s => Duration::from_secs(s),
    };
    // Bounded like every other duration, so the schedule's arithmetic cannot overflow.
    sigil_types::check_duration(grace)
        .map_err(|e| Status::invalid_argument(format!("grace period: {e}")))?;
    ca_rotation::rotate(
        state,
        RotateRequest {
            purpose,
            target,
            grace,
            force: req.force,
            by: by.to_string(),
            new: None,
            with_init: Txn::default(),
        },
    )
    .await?;
    status_of(state, purpose)
}

fn status_of(state: &AuthState, purpose: CaPurpose) -> Result<CaRotationStatus, Status> {
    statuses(&state.cas())
        .into_iter()
        .find(|s| s.purpose == purpose.as_str())
        .ok_or_else(|| Status::internal(format!("the {purpose} CA is missing")))
}

/// A key for an intermediate CA, pending until `import` brings its certificate.
#[derive(Serialize, Deserialize)]
struct PendingRequest {
    key: StoredKey,
    csr_pem: String,
    #[serde(with = "time::serde::rfc3339")]
    created: OffsetDateTime,
    by: String,
}

/// `sigil ca request`: a new key in the key manager (on the HSM, if one is
/// configured, it never leaves it) and a CSR for the organisation's CA to sign.
/// A later request replaces an earlier one.
pub async fn request(
    state: &AuthState,
    by: &str,
    req: &RequestCaRequest,
) -> Result<RequestCaResponse, Status> {
    let purpose = parse_purpose(&req.purpose)?;
    let (key, csr_pem) =
        sigil_pki::new_x509_ca_request(state.ca_km.as_ref(), purpose, &state.cluster)
            .map_err(pki_refusal)?;
    let pending = PendingRequest {
        key,
        csr_pem: csr_pem.clone(),
        created: OffsetDateTime::now_utc(),
        by: by.to_string(),
    };
    state
        .store
        .commit(Txn {
            ops: vec![Op::Put {
                key: keys::ca_request(purpose),
                value: serde_json::to_vec(&pending).map_err(|e| Status::internal(e.to_string()))?,
                expires: None,
            }],
            audit: vec![audit::event(
                audit::CA_REQUESTED,
                serde_json::json!({"ca": purpose.as_str(), "by": by}),
            )],
        })
        .await
        .map_err(|e| Status::unavailable(format!("saving the request: {e}")))?;
    Ok(RequestCaResponse { csr_pem })
}

/// `sigil ca import`: validates an intermediate CA (the chain with its key, or the
/// chain signed for the pending request) and starts a manual rotation to it.
pub async fn import(
    state: &AuthState,
    by: &str,
    req: &ImportCaRequest,
) -> Result<CaRotationStatus, Status> {
    let purpose = parse_purpose(&req.purpose)?;
    let km = state.ca_km.as_ref();
    let mut with_init = Txn::default();
    let (new, via) = if req.key_pem.is_empty() {
        let item = state
            .store
            .get(&keys::ca_request(purpose))
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "no key is waiting for a {purpose} certificate: run `sigil ca request --type {purpose}` first, or give --key"
                ))
            })?;
        let pending: PendingRequest = serde_json::from_slice(&item.value)
            .map_err(|e| Status::internal(format!("decoding the pending request: {e}")))?;
        let ca = sigil_pki::complete_x509_ca_request(
            km,
            purpose,
            &state.cluster,
            &pending.key,
            &req.cert_chain_pem,
        )
        .map_err(pki_refusal)?;
        with_init.ops.push(Op::Delete {
            key: keys::ca_request(purpose),
            expected_revision: Some(item.revision),
        });
        (ca, "csr")
    } else {
        let ca = sigil_pki::import_x509_ca(
            km,
            purpose,
            &state.cluster,
            &req.cert_chain_pem,
            &req.key_pem,
        )
        .map_err(pki_refusal)?;
        (ca, "key")
    };
    let subjects: Vec<String> = sigil_pki::pem_to_ders(&req.cert_chain_pem, "CERTIFICATE")
        .unwrap_or_default()
        .iter()
        .filter_map(|d| {
            x509_parser::parse_x509_certificate(d)
                .ok()
                .map(|(_, c)| c.subject().to_string())
        })
        .collect();
    with_init.audit.push(audit::event(
        audit::CA_IMPORTED,
        serde_json::json!({
            "ca": purpose.as_str(), "via": via, "by": by,
            "fingerprint": ca_rotation::fingerprint(&new), "chain": subjects,
        }),
    ));
    ca_rotation::rotate(
        state,
        RotateRequest {
            purpose,
            target: Some(RotationTarget::Phase(RotationPhase::Init)),
            grace: DEFAULT_GRACE,
            force: false,
            by: by.to_string(),
            new: Some(new),
            with_init,
        },
    )
    .await?;
    status_of(state, purpose)
}

/// A refused import or request names what is wrong with the input (never key
/// material: sigil-pki's errors are written not to quote it).
fn pki_refusal(e: sigil_pki::PkiError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Every CA's rotation state, in the stable purpose order.
pub fn statuses(cas: &Cas) -> Vec<CaRotationStatus> {
    cas.stored
        .iter()
        .map(|s| ca_rotation::status(s, cas.rotation(s.purpose)))
        .collect()
}
