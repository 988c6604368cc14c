//! Audit event types and a constructor. Events are committed in the same
//! store transaction as the change they describe, so a change and its record
//! cannot diverge. Integrity beyond the database: signed checkpoints
//! (`checkpoint`, `key`); floods of identical denials: `aggregate`.

pub mod aggregate;
pub mod checkpoint;
pub mod key;
pub mod key_pin;

use sigil_store::NewAuditEvent;
use time::OffsetDateTime;

pub const CLUSTER_CREATED: &str = "cluster.created";
pub const CLUSTER_MIGRATED: &str = "cluster.migrated";
pub const AUDIT_KEY_REPLACED: &str = "audit.key_replaced";
/// A CA rotation moved to another phase (or finished: `to` is `standby`).
pub const CA_ROTATION: &str = "ca.rotation";
/// A key and CSR were made for an intermediate CA (`sigil ca request`).
pub const CA_REQUESTED: &str = "ca.requested";
/// An intermediate CA was accepted and a rotation to it started (`sigil ca import`).
pub const CA_IMPORTED: &str = "ca.imported";
/// The key of a CA a rotation dropped was destroyed on the HSM.
pub const CA_KEY_DESTROYED: &str = "ca.key_destroyed";
/// CAs of purposes added after the cluster was created were made at start.
pub const CA_CREATED: &str = "ca.created";
pub const AUTH_STARTED: &str = "auth.started";
pub const JOIN_SUCCESS: &str = "bot.join";
pub const JOIN_DENIED: &str = "bot.join.denied";
/// A join the service could not check (an ID-token issuer unreachable or its
/// discovery redirected elsewhere, ...): the agent heard `Unavailable`, nothing
/// was issued, and the reason is here for whoever investigates.
pub const JOIN_UNCHECKED: &str = "bot.join.unchecked";
/// A `token` or `bound_keypair` join answered again for the same key after its
/// first answer was lost (join/retry.rs, join/bound_keypair_retry.rs): same
/// instance, generation 1, a new certificate.
/// Not a `bot.join`, so counting `bot.join` still counts instances made.
pub const JOIN_RETRY: &str = "bot.join.retry";
pub const RENEWAL: &str = "bot.renewal";
pub const RENEWAL_DENIED: &str = "bot.renewal.denied";
pub const GENERATION_MISMATCH: &str = "bot.generation_mismatch";
/// A renewable credential used after a renewal superseded it (refused).
pub const CREDENTIAL_SUPERSEDED: &str = "bot.credential_superseded";
/// An admin call refused: no rule allows it, or it would grant more than
/// the caller holds.
pub const ADMIN_DENIED: &str = "admin.denied";
pub const CERT_ISSUED: &str = "cert.issued";
/// A host certificate refused (principals the roles do not allow, a lock).
pub const CERT_DENIED: &str = "cert.denied";
pub const LOCK_CREATED: &str = "lock.created";
pub const LOCK_DELETED: &str = "lock.deleted";
pub const RESOURCE_CREATED: &str = "resource.created";
pub const RESOURCE_UPDATED: &str = "resource.updated";
pub const RESOURCE_DELETED: &str = "resource.deleted";
pub const WORKLOAD_IDENTITY_ISSUED: &str = "workload_identity.issued";
pub const WORKLOAD_IDENTITY_DENIED: &str = "workload_identity.denied";

/// The audit fields of a `Credentials` (for struct update syntax): the newest signed
/// checkpoint and the key that signs them, so agents can act as witnesses.
pub fn witness_fields(state: &crate::state::AuthState) -> sigil_proto::v1::Credentials {
    sigil_proto::v1::Credentials {
        audit_checkpoint: state.checkpoints.latest_proto(),
        audit_public_key: state.checkpoints.public_key().to_string(),
        ..Default::default()
    }
}

/// Build an event stamped now.
pub fn event(event_type: &str, fields: serde_json::Value) -> NewAuditEvent {
    NewAuditEvent {
        time: OffsetDateTime::now_utc(),
        event_type: event_type.to_string(),
        fields,
    }
}
