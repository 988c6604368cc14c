//! CA rotation without downtime. A rotation is one store record per CA purpose
//! (`/ca_rotations/<purpose>`) next to the established CA (`/cas/<purpose>`): it holds
//! the new CA and the phase, which decides which of the two signs, which serves the
//! auth service's TLS certificate and that both are trusted
//! (`sigil_types::ca_rotation`). Every auth server follows both keys through the
//! store's change feed ([`follow`]) and agents follow the servers (`WatchCas`), so a
//! phase change reaches every agent, which then re-issues what it holds.

mod advance;
mod follow;

use serde::{Deserialize, Serialize};
use sigil_pki::{CaPurpose, StoredCa};
use sigil_proto::v1::CaRotationStatus;
use sigil_store::Store;
use sigil_types::{RotationMode, RotationPhase, RotationSchedule};
use time::OffsetDateTime;

use crate::keys;

pub use advance::{AutoFailures, RotateRequest, auto_advance, rotate};
pub use follow::{check, follow, reload};

/// A rotation in progress, as stored.
#[derive(Serialize, Deserialize, Clone, Debug)]
pub struct CaRotation {
    pub purpose: CaPurpose,
    /// Names this rotation in audit events.
    pub id: String,
    pub phase: RotationPhase,
    pub mode: RotationMode,
    /// When an automatic rotation advances.
    #[serde(default)]
    pub schedule: Option<RotationSchedule>,
    #[serde(with = "time::serde::rfc3339")]
    pub started: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub phase_changed: OffsetDateTime,
    /// When the new CA started signing (entering `update_clients`).
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub signing_since: Option<OffsetDateTime>,
    /// The CA being rotated in.
    pub new: StoredCa,
    /// Who started the rotation.
    pub by: String,
}

/// A rotation record and its store revision (for compare-and-swap).
pub struct StoredRotation {
    pub record: CaRotation,
    pub revision: i64,
}

/// The rotation of `purpose` in progress, if any.
pub async fn read(store: &dyn Store, purpose: CaPurpose) -> anyhow::Result<Option<StoredRotation>> {
    let Some(item) = store.get(&keys::ca_rotation(purpose)).await? else {
        return Ok(None);
    };
    Ok(Some(StoredRotation {
        record: decode(purpose, &item.value)?,
        revision: item.revision,
    }))
}

/// A stored rotation record of `purpose`.
pub fn decode(purpose: CaPurpose, value: &[u8]) -> anyhow::Result<CaRotation> {
    serde_json::from_slice(value)
        .map_err(|e| anyhow::anyhow!("decoding the {} CA rotation record: {e}", purpose.as_str()))
}

/// `sha256:<hex>` naming a CA: the SPKI pin of an X.509 CA (what agents pin), the
/// SHA-256 of the OpenSSH key line of an SSH CA.
pub fn fingerprint(ca: &StoredCa) -> String {
    let der = ca
        .cert_pem
        .as_deref()
        .and_then(|pem| sigil_pki::pem_to_ders(pem, "CERTIFICATE").ok())
        .and_then(|d| d.into_iter().next());
    match (der, &ca.ssh_public_key) {
        (Some(d), _) => sigil_pki::spki_pin_of_cert(&d).unwrap_or_default(),
        (None, Some(ssh)) => format!("sha256:{}", sigil_pki::sha256_hex(ssh.as_bytes())),
        _ => String::new(),
    }
}

/// How `sigil ca status` and the `WatchCas` stream show one CA.
pub fn status(established: &StoredCa, rotation: Option<&CaRotation>) -> CaRotationStatus {
    let unix = |t: OffsetDateTime| t.unix_timestamp();
    let mut s = CaRotationStatus {
        purpose: established.purpose.as_str().to_string(),
        phase: "standby".into(),
        established_fingerprint: fingerprint(established),
        signing_fingerprint: fingerprint(established),
        ..Default::default()
    };
    if let Some(r) = rotation {
        s.phase = r.phase.as_str().to_string();
        s.mode = match r.mode {
            RotationMode::Manual => "manual",
            RotationMode::Auto => "auto",
        }
        .into();
        s.rotation_id = r.id.clone();
        s.new_fingerprint = fingerprint(&r.new);
        if r.phase.roles().new_signs {
            s.signing_fingerprint = s.new_fingerprint.clone();
        }
        s.started_unix = unix(r.started);
        s.phase_changed_unix = unix(r.phase_changed);
        if let Some(sched) = r.schedule
            && r.mode == RotationMode::Auto
        {
            let (next, at) = match r.phase {
                RotationPhase::Init => ("update_clients", Some(sched.update_clients)),
                RotationPhase::UpdateClients => ("update_servers", Some(sched.update_servers)),
                RotationPhase::UpdateServers => ("standby", Some(sched.standby)),
                RotationPhase::Rollback => ("", None),
            };
            s.next_phase = next.into();
            s.next_phase_unix = at.map(unix).unwrap_or_default();
        }
    }
    s
}
