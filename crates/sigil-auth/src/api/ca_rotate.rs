//! `sigil ca rotate` and `sigil ca status`: the admin side of CA rotation
//! (crate::ca_rotation holds the state machine's effects).

use std::time::Duration;

use sigil_proto::v1::{CaRotationStatus, RotateCaRequest};
use sigil_types::RotationTarget;
use tonic::Status;

use super::ca_export::parse_purpose;
use crate::ca_rotation::{self, RotateRequest};
use crate::cluster::Cas;
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
    ca_rotation::rotate(
        state,
        RotateRequest {
            purpose,
            target,
            grace,
            force: req.force,
            by: by.to_string(),
        },
    )
    .await?;
    let cas = state.cas();
    statuses(&cas)
        .into_iter()
        .find(|s| s.purpose == purpose.as_str())
        .ok_or_else(|| Status::internal(format!("the {purpose} CA is missing")))
}

/// Every CA's rotation state, in the stable purpose order.
pub fn statuses(cas: &Cas) -> Vec<CaRotationStatus> {
    cas.stored
        .iter()
        .map(|s| ca_rotation::status(s, cas.rotation(s.purpose)))
        .collect()
}
