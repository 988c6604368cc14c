//! The trust domain's published material: the X.509 authority (the spiffe CA),
//! the JWT-SVID signing key, the CRL of revoked X.509-SVIDs, and the documents
//! built from them (SPIFFE bundle, JWKS). Rebuilt when revocations change and
//! re-signed well before the CRL's nextUpdate, so a CRL never goes stale.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sigil_pki::RevokedSerial;
use sigil_proto::v1::{FederatedBundle, TrustBundle};
use sigil_types::WorkloadIdentityX509Revocation;
use time::OffsetDateTime;
use tokio::sync::watch;

use crate::cluster::Cas;

/// How long a signed CRL is valid (its nextUpdate).
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);
/// How often the CRL is re-signed even when nothing changed.
pub const CRL_RESIGN_EVERY: Duration = Duration::from_secs(12 * 3600);
/// `spiffe_refresh_hint` of the bundle endpoint: how often federated peers re-fetch.
pub const BUNDLE_REFRESH_HINT: Duration = Duration::from_secs(300);

/// One consistent version of everything a relying party needs.
pub struct TrustSnapshot {
    /// Increases on every rebuild (also the CRL number and `spiffe_sequence`).
    pub sequence: u64,
    pub x509_authorities: Vec<Vec<u8>>,
    /// Plain JWKS of the JWT-SVID keys (no `use` member; see STACK.md).
    pub jwks_json: String,
    /// The SPIFFE bundle document for `/.well-known/spiffe-bundle`.
    pub spiffe_bundle_json: String,
    /// DER CRLs, one per trusted spiffe CA (the signer's first): an SVID is listed
    /// by its issuer's CRL only. Empty while nothing is revoked.
    pub crl_ders: Vec<Vec<u8>>,
    /// Revoked serials (lowercase hex), as signed into each of `crl_ders`.
    pub revoked: BTreeSet<String>,
}

/// The current [`TrustSnapshot`], replaced atomically; followers are told.
/// Federated (foreign) bundles are kept beside it: they change on their own
/// schedule (federation/), and followers are told of those changes too.
pub struct Trust {
    current: RwLock<Arc<TrustSnapshot>>,
    federated: RwLock<Arc<FederatedBundles>>,
    changed: watch::Sender<u64>,
}

/// Federated bundles by foreign trust domain.
pub type FederatedBundles = BTreeMap<String, FederatedBundle>;

impl Trust {
    /// Build the first snapshot.
    pub fn new(cas: &Cas, revocations: &[WorkloadIdentityX509Revocation]) -> anyhow::Result<Trust> {
        // Seconds since the epoch: sequences keep increasing across restarts.
        let seq = OffsetDateTime::now_utc().unix_timestamp().max(1) as u64;
        let snap = build(cas, revocations, seq)?;
        Ok(Trust {
            changed: watch::channel(snap.sequence).0,
            current: RwLock::new(Arc::new(snap)),
            federated: RwLock::default(),
        })
    }

    pub fn current(&self) -> Arc<TrustSnapshot> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The federated bundles now.
    pub fn federated(&self) -> Arc<FederatedBundles> {
        self.federated
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Replace the federated bundles; followers are told when they changed.
    pub fn set_federated(&self, bundles: FederatedBundles) -> bool {
        {
            let mut cur = self.federated.write().unwrap_or_else(|p| p.into_inner());
            if **cur == bundles {
                return false;
            }
            *cur = Arc::new(bundles);
        }
        self.changed.send_modify(|_| {});
        true
    }

    /// Follow rebuilds (the value is the new sequence).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// Rebuild if the revoked set changed, or always when `resign` (the CRL's
    /// periodic re-signing). Returns whether a new snapshot was published.
    pub fn refresh(
        &self,
        cas: &Cas,
        revocations: &[WorkloadIdentityX509Revocation],
        resign: bool,
    ) -> anyhow::Result<bool> {
        let cur = self.current();
        let wanted: BTreeSet<String> = revocations
            .iter()
            .map(|r| r.metadata.name.clone())
            .collect();
        if !resign && wanted == cur.revoked {
            return Ok(false);
        }
        let now = OffsetDateTime::now_utc().unix_timestamp().max(1) as u64;
        let snap = build(cas, revocations, now.max(cur.sequence + 1))?;
        let seq = snap.sequence;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
        self.changed.send_replace(seq);
        Ok(true)
    }

    /// Rebuild at once with new CAs (a rotation step).
    pub fn rebuild(
        &self,
        cas: &Cas,
        revocations: &[WorkloadIdentityX509Revocation],
    ) -> anyhow::Result<()> {
        let cur = self.current();
        let now = OffsetDateTime::now_utc().unix_timestamp().max(1) as u64;
        let snap = build(cas, revocations, now.max(cur.sequence + 1))?;
        let seq = snap.sequence;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(snap);
        self.changed.send_replace(seq);
        Ok(())
    }

    /// The bundle as the agent API carries it.
    pub fn bundle_proto(&self, trust_domain: &str) -> TrustBundle {
        let s = self.current();
        TrustBundle {
            trust_domain: trust_domain.to_string(),
            x509_authorities: s.x509_authorities.clone(),
            jwt_jwks_json: s.jwks_json.clone(),
            crl_der: s.crl_ders.first().cloned().unwrap_or_default(),
            crl_ders: s.crl_ders.clone(),
            sequence: s.sequence,
            revoked_serials: s.revoked.iter().cloned().collect(),
            federated: self.federated().as_ref().clone().into_iter().collect(),
        }
    }
}

/// Whether a snapshot can be built from `cas` (before a rotation step is committed).
pub fn check(cas: &Cas) -> anyhow::Result<()> {
    build(cas, &[], 1).map(|_| ())
}

fn build(
    cas: &Cas,
    revocations: &[WorkloadIdentityX509Revocation],
    sequence: u64,
) -> anyhow::Result<TrustSnapshot> {
    // During a rotation both CAs are authorities: SVIDs of either verify.
    let x509_authorities: Vec<Vec<u8>> = cas
        .spiffe
        .trusted
        .iter()
        .map(|c| c.cert_der().to_vec())
        .collect();
    let jwt_keys: Vec<Vec<u8>> = cas
        .jwt
        .trusted
        .iter()
        .map(|c| c.public_key_spki_der())
        .collect();
    let jwks = sigil_pki::jwks_document(&jwt_keys)?;
    let bundle = sigil_pki::spiffe_bundle_document(
        &x509_authorities,
        &jwt_keys,
        sequence,
        BUNDLE_REFRESH_HINT,
    )?;
    let revoked: BTreeSet<String> = revocations
        .iter()
        .map(|r| r.metadata.name.clone())
        .collect();
    let crl_ders = if revocations.is_empty() {
        Vec::new()
    } else {
        let entries: Vec<RevokedSerial> = revocations
            .iter()
            .map(|r| RevokedSerial {
                serial_hex: r.metadata.name.clone(),
                revoked_at: r.spec.revoked_at,
            })
            .collect();
        // Every trusted CA signs one: a serial is revoked whichever CA issued it
        // (serials are random, so one CA's list does not touch another's).
        let mut crls = Vec::with_capacity(cas.spiffe.trusted.len());
        for ca in &cas.spiffe.trusted {
            crls.push(ca.sign_crl(sequence, &entries, CRL_VALIDITY)?);
        }
        crls
    };
    Ok(TrustSnapshot {
        sequence,
        x509_authorities,
        jwks_json: jwks.to_string(),
        spiffe_bundle_json: bundle.to_string(),
        crl_ders,
        revoked,
    })
}
