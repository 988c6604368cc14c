//! Shared state of a running auth service.

use std::sync::{Arc, RwLock};
use std::time::Instant;

use sigil_pki::KeyManager;
use sigil_store::Store;

use crate::cache::Cache;
use crate::cluster::Cas;
use crate::join::JoinRegistry;
use crate::trust::Trust;

/// Everything the API handlers share.
pub struct AuthState {
    pub store: Arc<dyn Store>,
    pub cluster: String,
    /// The CAs as of the last read of the store; see [`AuthState::cas`].
    pub cas: RwLock<Arc<Cas>>,
    /// Where CA keys are made and loaded (rotations make new ones).
    pub ca_km: Arc<dyn KeyManager>,
    /// [`Cas::epoch`], for agents following CA rotations (`WatchCas`).
    pub ca_epoch: tokio::sync::watch::Sender<String>,
    /// Serialises CA reloads (ca_rotation::reload).
    pub cas_reload: tokio::sync::Mutex<()>,
    /// Why the last reload of changed CA records failed, until one succeeds: this
    /// server may be signing with a CA the cluster has moved away from.
    pub cas_stale: RwLock<Option<String>>,
    /// The TLS certificate both listeners serve, re-issued when the host CA changes.
    pub server_cert: Arc<crate::tls::ServerCert>,
    /// The client CAs the mTLS listener accepts.
    pub client_roots: Arc<crate::tls::ClientRoots>,
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
    /// Signed audit checkpoints (integrity beyond the database).
    pub checkpoints: Arc<crate::audit::checkpoint::Checkpoints>,
    /// Aggregation of floods of identical denials.
    pub denials: crate::audit::aggregate::Denials,
    /// TLS key-exchange groups negotiated since start, per listener.
    pub key_exchanges: Arc<crate::key_exchange::KeyExchanges>,
    /// See [`crate::AuthConfig::instance_retention`].
    pub instance_retention: std::time::Duration,
}

pub type SharedState = Arc<AuthState>;

impl AuthState {
    /// When a bot instance record written with a credential valid until
    /// `not_after` is removed, unless a later join or renewal rewrites it.
    pub fn instance_expiry(&self, not_after: time::OffsetDateTime) -> Option<time::OffsetDateTime> {
        Some(not_after + self.instance_retention)
    }

    /// The CAs now; cheap (one `Arc` clone). Hold the result for one request so every
    /// certificate of a response comes from the same CA set.
    pub fn cas(&self) -> Arc<Cas> {
        self.cas.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set_cas(&self, cas: Arc<Cas>) {
        *self.cas.write().unwrap_or_else(|p| p.into_inner()) = cas;
    }

    /// The host CA pin agents use to trust this service on first contact: that of
    /// the host CA the service serves with now.
    pub fn ca_pin(&self) -> String {
        self.cas().server_pin()
    }

    /// `Unavailable` while this server may hold a stale view of locks (a shared
    /// store's change feed has not been read for a few seconds): every lock check
    /// fails closed, and agents move to another server.
    pub fn view_current(&self) -> Result<(), tonic::Status> {
        self.store.health().map_err(|why| {
            tonic::Status::unavailable(format!(
                "this auth server cannot vouch for its view of locks ({why}); retry, or use another auth server"
            ))
        })?;
        match self.cas_stale() {
            None => Ok(()),
            // The reason is in the server's log (it may name the store or the HSM).
            Some(_) => Err(tonic::Status::unavailable(
                "this auth server could not load the cluster's current CAs; retry, or use another auth server",
            )),
        }
    }

    /// See [`AuthState::cas_stale`] (the field).
    pub fn cas_stale(&self) -> Option<String> {
        self.cas_stale
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn set_cas_stale(&self, why: Option<String>) {
        *self.cas_stale.write().unwrap_or_else(|p| p.into_inner()) = why;
    }
}
