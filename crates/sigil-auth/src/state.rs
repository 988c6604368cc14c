//! Shared state of a running auth service.

use std::sync::Arc;
use std::time::Instant;

use sigil_store::Store;

use crate::cache::Cache;
use crate::cluster::Cas;
use crate::join::JoinRegistry;
use crate::trust::Trust;

/// Everything the API handlers share.
pub struct AuthState {
    pub store: Arc<dyn Store>,
    pub cluster: String,
    pub cas: Cas,
    pub cache: Cache,
    /// SPIFFE bundle, JWKS and SVID CRL.
    pub trust: Trust,
    /// `iss` of JWT-SVIDs and the OIDC discovery issuer.
    pub jwt_issuer: String,
    pub joins: JoinRegistry,
    /// HTTPS client for join verification (OIDC discovery/JWKS, STS).
    pub outbound: crate::outbound::Outbound,
    /// STS endpoints `iam` joins may be forwarded to (empty: AWS's own).
    pub sts_endpoints: Vec<String>,
    /// What `bots add` prints as the address to join (the control-plane listener).
    pub advertise_addr: String,
    pub public_addr: String,
    pub data_dir: std::path::PathBuf,
    pub started: Instant,
    /// The host CA pin agents use to trust this service on first contact.
    pub ca_pin: String,
    /// Signed audit checkpoints (integrity beyond the database).
    pub checkpoints: Arc<crate::audit::checkpoint::Checkpoints>,
    /// Aggregation of floods of identical denials.
    pub denials: crate::audit::aggregate::Denials,
}

pub type SharedState = Arc<AuthState>;

impl AuthState {
    /// `Unavailable` while this server may hold a stale view of locks (a shared
    /// store's change feed has not been read for a few seconds): every lock check
    /// fails closed, and agents move to another server.
    pub fn view_current(&self) -> Result<(), tonic::Status> {
        self.store.health().map_err(|why| {
            tonic::Status::unavailable(format!(
                "this auth server cannot vouch for its view of locks ({why}); retry, or use another auth server"
            ))
        })
    }
}
